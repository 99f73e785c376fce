"""CAC validation runs in the state database (a schema step listed in ``connector.site_db.SCHEMA_STEPS``).

    cac_validation_runs   one row per ``site-connector cac validate``: which model (SHA-256, name,
                          version, its manifest's validated flag), when, how many studies were
                          compared, and the agreement figures; ``detail`` holds the 4x4 category
                          table and the counts of rows not found / not scored (JSON)

No identifier is stored: no accession number, no study key, no per-study score; a run is counts and
statistics only. The dashboard's CAC validation page shows the last run per model hash.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import sqlite_utils

COLUMNS = ("id", "at", "model_sha256", "model_name", "model_version", "model_validated", "n", "references_total",
           "kappa", "bias", "loa_lower", "loa_upper", "rho", "disagreements", "seconds", "detail")


def create_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS cac_validation_runs (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            model_sha256 TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            model_validated INTEGER NOT NULL,
            n INTEGER NOT NULL,
            references_total INTEGER NOT NULL,
            kappa REAL,
            bias REAL,
            loa_lower REAL,
            loa_upper REAL,
            rho REAL,
            disagreements INTEGER NOT NULL,
            seconds REAL,
            detail TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS cac_validation_runs_model ON cac_validation_runs (model_sha256, at)")


def record_run(conn: sqlite3.Connection, run: dict[str, Any]) -> int:
    """Insert one run (keys as :data:`COLUMNS`, ``detail`` a dict); call inside a write transaction."""
    values = {k: run.get(k) for k in COLUMNS if k != "id"}
    values["detail"] = json.dumps(run.get("detail") or {}, sort_keys=True)
    values["model_validated"] = 1 if run.get("model_validated") else 0
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cur = conn.execute(f"INSERT INTO cac_validation_runs ({names}) VALUES ({marks})", list(values.values()))
    return int(cur.lastrowid or 0)


def _row(cols: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(cols, row, strict=True))
    out["detail"] = json.loads(out.get("detail") or "{}")
    out["model_validated"] = bool(out["model_validated"])
    return out


def last_runs_per_model(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The latest run of each model hash, newest first, each with ``runs`` (how many that model had)."""
    cols = ", ".join(f"r.{c}" for c in COLUMNS)
    cur = conn.execute(
        f"SELECT {cols}, c.runs FROM cac_validation_runs r "
        "JOIN (SELECT model_sha256, MAX(id) AS last_id, COUNT(*) AS runs FROM cac_validation_runs "
        "GROUP BY model_sha256) c ON r.id = c.last_id ORDER BY r.at DESC, r.id DESC"
    )
    out = []
    for row in cur:
        item = _row(list(COLUMNS), row[:-1])
        item["runs"] = int(row[-1])
        out.append(item)
    return out

