"""When a study counts as delivered: its de-identified study UIDs and the registry jobs queued under them.

Why beside the outbox: the question "has the registry acknowledged everything this study sent?" is
a question about outbox jobs. A study's pipeline run records which de-identified Study Instance
UIDs it became (``study_outputs``); the outbox groups its jobs by that UID (STOW batches, the
manifest, CAC results). The study's own state moves through :class:`StateStore` methods.

    study_outputs   (study_key, study_uid): what each study was queued under (an earlier run's
                    rows are replaced)
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from connector.store.state import StateStore


def create_schema(db: sqlite_utils.Database) -> None:
    """Schema step 5 (see :data:`connector.site_db.SCHEMA_STEPS`)."""
    db["study_outputs"].create({"study_key": str, "study_uid": str}, pk=("study_key", "study_uid"),
                               if_not_exists=True)
    db["study_outputs"].create_index(["study_uid"], if_not_exists=True)


def record_study_outputs(store: StateStore, key: str, study_uids: list[str]) -> None:
    """The de-identified study UIDs ``key`` was queued under (replaces an earlier run's)."""
    with store.writing() as conn:
        conn.execute("DELETE FROM study_outputs WHERE study_key=?", (key,))
        conn.executemany("INSERT INTO study_outputs (study_key, study_uid) VALUES (?, ?)",
                         [(key, uid) for uid in sorted(set(study_uids))])


def promote_delivered(store: StateStore) -> list[str]:
    """Move every queued study whose registry jobs are all acknowledged to ``pushed``; returns their keys.

    A study is delivered when, for each de-identified study UID it became, no job of that UID's
    group (STOW batches, manifest, CAC results) is left undone and its manifest is done (the
    manifest waits for the subject and every batch).
    """
    with store.writing() as conn:
        keys = [r[0] for r in conn.execute(
            """
            SELECT s.study_key FROM studies s
            WHERE s.state = 'queued'
              AND EXISTS (SELECT 1 FROM study_outputs o WHERE o.study_key = s.study_key)
              AND NOT EXISTS (
                SELECT 1 FROM study_outputs o WHERE o.study_key = s.study_key AND (
                  EXISTS (SELECT 1 FROM outbox_jobs j WHERE j.grp = o.study_uid AND j.state != 'done')
                  OR NOT EXISTS (SELECT 1 FROM outbox_jobs j
                                 WHERE j.grp = o.study_uid AND j.kind = 'manifest' AND j.state = 'done')))
            """)]
        store.mark_pushed(keys)
    return keys


def delivery(store: StateStore, key: str) -> dict[str, dict[str, int]]:
    """A study's registry jobs by kind and state, e.g. ``{"stow": {"done": 2, "pending": 1}}``."""
    rows = store.conn.execute(
        """SELECT j.kind, j.state, COUNT(*) FROM outbox_jobs j
           JOIN study_outputs o ON j.grp = o.study_uid WHERE o.study_key = ? GROUP BY j.kind, j.state""",
        (key,)).fetchall()
    out: dict[str, dict[str, int]] = {}
    for kind, state, count in rows:
        out.setdefault(kind, {})[state] = count
    return out


def waiting_for_registry(store: StateStore, limit: int = 20) -> list[dict[str, Any]]:
    """Queued studies not yet delivered, oldest first: what each still waits for and the last
    error the registry gave (study keys and job kinds only, nothing identifying)."""
    keys = [r[0] for r in store.conn.execute(
        "SELECT study_key FROM studies WHERE state='queued' ORDER BY updated_at LIMIT ?", (int(limit),))]
    out = []
    for key in keys:
        waiting = {kind: {st: n for st, n in states.items() if st != "done"}
                   for kind, states in delivery(store, key).items()}
        row = store.conn.execute(
            """SELECT j.last_error FROM outbox_jobs j JOIN study_outputs o ON j.grp = o.study_uid
               WHERE o.study_key = ? AND j.state != 'done' AND j.last_error IS NOT NULL
               ORDER BY j.updated_at DESC LIMIT 1""", (key,)).fetchone()
        out.append({"study": key, "waiting": {k: v for k, v in waiting.items() if v},
                    "last_error": row[0] if row else None})
    return out
