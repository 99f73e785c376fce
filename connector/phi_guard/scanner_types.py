"""What the guard reports: a reason code and where, never the value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """A leak: ``code`` is ``phi-guard:<kind>``; ``where`` is a tag path or ``bytes``. No values."""

    code: str
    where: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "where": self.where}
