"""The ``[http]`` configuration section: where health, metrics and the dashboard are served.

Why 127.0.0.1 by default: the dashboard shows the state of clinical data flows and lets staff
release or purge quarantined objects, so it is reachable from the server itself unless hospital IT
deliberately opens it (``host = "0.0.0.0"`` behind their firewall or reverse proxy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from connector.config_fields import check, setting

if TYPE_CHECKING:
    from connector.config import Config


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(True, doc="serve /healthz, /metrics and the dashboard")
    host: str = setting("127.0.0.1", doc="address for health, metrics and the dashboard (0.0.0.0 = every interface)")
    port: int = setting(8080, check(lambda v: 0 <= v <= 65535, "must be between 0 and 65535"),
                        doc="HTTP port (0 = any free port, for tests)")
    users_file: Path | None = setting(None, doc="dashboard users (scrypt hashes); unset = <data_dir>/web/users.json")
    session_minutes: int = setting(480, check(lambda v: 1 <= v <= 7 * 24 * 60, "must be between 1 and 10080"),
                                   doc="a dashboard login expires after this many minutes without activity")
    registry_unreachable_seconds: float = setting(
        3600.0, check(lambda v: v > 0, "must be positive"),
        doc="/healthz reports the registry once it has been unreachable this long",
    )
    max_upload_bytes: int = setting(20 * 1024**2, check(lambda v: v > 0, "must be positive"),
                                    doc="largest follow-up file accepted by the dashboard")


def users_path(config: Config) -> Path:
    """The users file the dashboard and ``site-connector users`` share."""
    return config.http.users_file or config.storage.data_dir / "web" / "users.json"
