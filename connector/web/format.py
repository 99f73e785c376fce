"""Value formatting for the dashboard's templates (registered as Jinja filters).

Pure functions: they turn counts, sizes and times into short text; escaping is Jinja's job.
"""

from __future__ import annotations

import time


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def fmt_cell(value: object) -> object:
    """Booleans as yes/no in tables (follow-up preview)."""
    return ("yes" if value else "no") if isinstance(value, bool) else value


def sop_class(uid: str) -> str:
    """A SOP Class UID's name (e.g. "CT Image Storage"), or the UID when pydicom does not know it."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name or uid


FILTERS = {"fmt_time": fmt_time, "fmt_age": fmt_age, "fmt_bytes": fmt_bytes, "fmt_cell": fmt_cell,
           "sop_class": sop_class}
