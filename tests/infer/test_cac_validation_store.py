"""cac_validation_runs: created by migration step 10 on a new database and on an upgraded one (a site
whose state DB stopped at step 9), and the last run per model hash."""

from __future__ import annotations

from pathlib import Path

from connector.infer.validation_store import last_runs_per_model, record_run
from connector.infer.validation_store import create_schema
from connector.site_db import SCHEMA_STEPS, open_state


def _run(sha: str, at: float, kappa: float | None) -> dict:
    return {"at": at, "model_sha256": sha, "model_name": "m", "model_version": "1", "model_validated": True,
            "n": 3, "references_total": 3, "kappa": kappa, "bias": None, "loa_lower": None, "loa_upper": None,
            "rho": None, "disagreements": 0, "seconds": 1.0, "detail": {"table": [[3, 0, 0, 0]] + [[0] * 4] * 3}}


def test_registered_as_a_migration_step() -> None:
    assert (10, create_schema) in SCHEMA_STEPS


def test_an_existing_database_gets_the_table_at_start(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    with store.write() as conn:  # as a site's database before this step existed
        conn.execute("DROP TABLE cac_validation_runs")
        conn.execute("PRAGMA user_version=9")
    store.close()
    store = open_state(tmp_path / "state.db")
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] >= 10
        with store.write() as conn:
            record_run(conn, _run("a" * 64, 100.0, 0.5))
            record_run(conn, _run("b" * 64, 300.0, None))
            record_run(conn, _run("a" * 64, 200.0, 0.9))
        last = last_runs_per_model(store.conn)
        assert [(r["model_sha256"][0], r["kappa"], r["runs"]) for r in last] == [("b", None, 1), ("a", 0.9, 2)]
        assert last[1]["model_validated"] is True and last[1]["detail"]["table"][0] == [3, 0, 0, 0]
    finally:
        store.close()
