"""Where everything lives under the data folder. One definition, used by every stage and command.

    <data_dir>/state/state.db      the state database (instances, studies, outbox)
    <data_dir>/spool/partial/      objects being received (temporary, removed at start-up)
    <data_dir>/spool/incoming/     original objects, durable, as received (never leave the site)
    <data_dir>/spool/outgoing/     de-identified objects waiting to be pushed
    <data_dir>/quarantine/<stage>/ objects that must not go on, each with a reason file
    <data_dir>/logs/               JSON log files when file logging is on
    <data_dir>/results/<study>/    local CAC artefacts (scored-calcium maps for the study page; never pushed)
    <key_dir>                      key files (default <data_dir>/keys)

Every file under these is the service user's alone (0600, folders 0700): the daemon and the
commands that write data run with :data:`PRIVATE_UMASK`, whatever umask they were started with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from connector.config import Config

SHARDS = 256  # incoming/<2 hex digits>/ keeps directories small for months of data
# Owner-only files and folders. Set once per process rather than per file: SQLite (state.db, -wal,
# -shm), numpy, shutil and logging create files with the umask and no mode of their own.
PRIVATE_UMASK = 0o077


@dataclass(frozen=True)
class SiteLayout:
    data_dir: Path
    key_dir: Path

    @classmethod
    def from_config(cls, config: Config) -> SiteLayout:
        return cls(config.storage.data_dir, config.key_dir)

    @classmethod
    def of_quarantine(cls, quarantine_dir: Path) -> SiteLayout:
        """The layout a quarantine folder belongs to, for code handed only that folder. Its key
        folder cannot be known from it: the default one is assumed (do not use it for keys)."""
        return cls(quarantine_dir.parent, quarantine_dir.parent / "keys")

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state" / "state.db"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def partial(self) -> Path:
        return self.spool / "partial"

    @property
    def incoming(self) -> Path:
        return self.spool / "incoming"

    @property
    def outgoing(self) -> Path:
        return self.spool / "outgoing"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def results(self) -> Path:
        return self.data_dir / "results"

    def scored_calcium_path(self, study_key: str, series_number: int) -> Path:
        """Local scored-calcium map of one scored series (``series_number``: 0-based rank in the
        study's CAC results). Named by the study key only: no UID or identifier in file names."""
        return self.results / study_key / f"cac-{series_number}.npz"

    def incoming_relpath(self, key: str) -> str:
        """Spool path (relative to the spool root) of an original object, from its instance key."""
        return f"incoming/{key[:2]}/{key}.dcm"

    def ensure(self) -> None:
        """Create the folders with owner-only permissions (PHI lives here)."""
        for folder in (self.data_dir, self.state_db.parent, self.spool, self.partial, self.incoming, self.outgoing,
                       self.quarantine, self.logs, self.results, self.key_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if folder.stat().st_mode & 0o077:
                os.chmod(folder, 0o700)
        for i in range(SHARDS):
            (self.incoming / f"{i:02x}").mkdir(exist_ok=True, mode=0o700)
