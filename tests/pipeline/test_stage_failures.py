"""Optional-stage failures on a real state database, and the scrubbed reasons that describe them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.safe_reason import frames, safe_reason, scrub
from connector.store import stage_failures as sf
from connector.store.state import InstanceRecord, StateStore
from connector.site_db import open_state


def _study(store: StateStore, uid: str, state: str) -> str:
    store.record_instance(InstanceRecord(uid + ".1", "1.2.840.10008.5.1.4.1.1.2", uid, uid + ".9", "CT",
                                         "1.2.840.10008.1.2.1", f"{uid}.dcm", "", 1, "scp"))
    [row] = store.conn.execute("SELECT study_key FROM studies WHERE study_uid=?", (uid,)).fetchall()
    store.set_study_state(row[0], state)
    return str(row[0])


def test_retry_policy_doubles_and_gives_up() -> None:
    policy = sf.RetryPolicy(max_attempts=4, first_seconds=60, max_seconds=150)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [60, 120, 150, None, None]


def test_failure_is_recorded_retried_when_due_and_cleared(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    pushed = _study(store, "1.2.3.4", "pushed")
    busy = _study(store, "1.2.3.5", "processing")
    policy = sf.RetryPolicy(max_attempts=3, first_seconds=100)
    with store.write() as conn:
        assert sf.record_failure(conn, pushed, "cac", "ValueError", "ValueError: x", "sha-a", policy, now=1000) == 1
        sf.record_failure(conn, busy, "cac", "ValueError", "ValueError: x", "sha-a", policy, now=1000)
        assert sf.take_due(store, now=1099) == []  # not due yet
        assert sf.take_due(store, now=1100) == [pushed]  # the busy one is not at rest: left to its run
    assert store.study(pushed)["state"] == "stable"  # the worker leases it again
    with store.write() as conn:
        assert sf.take_due(store, now=1200) == []  # handed back once, not twice
    store.set_study_state(pushed, "pushed")
    with store.write() as conn:
        assert sf.record_failure(conn, pushed, "cac", "ValueError", "ValueError: y", "sha-a", policy, now=1200) == 2
        assert sf.record_failure(conn, pushed, "cac", "ValueError", "ValueError: z", "sha-a", policy, now=1500) == 3
    [row] = sf.failures_of(store.conn, pushed)
    assert row["next_attempt_at"] is None and row["reason"] == "ValueError: z"  # given up after 3 runs
    assert sf.failure_counts(store.conn) == {"cac": {"retrying": 1, "given_up": 1}}
    with store.write() as conn:
        assert sf.take_due(store, now=10**9) == []
        assert sf.reschedule_other_versions(conn, "cac", "sha-b", now=2000) == 2  # a fixed model installed
        assert sf.take_due(store, now=2000) == [pushed]
        # the new model's first failure counts as its first attempt
        assert sf.record_failure(conn, pushed, "cac", "ValueError", "v", "sha-b", policy, now=2001) == 1
        assert sf.clear_failure(conn, pushed, "cac") and not sf.clear_failure(conn, pushed, "cac")
        assert sf.retry_now(conn, busy, now=3000) == 1
    assert sf.failures_of(store.conn, pushed) == []
    assert [f["study"] for f in sf.recent_failures(store.conn)] == [busy]
    store.close()


def test_reason_keeps_what_to_fix_and_drops_values() -> None:
    try:
        object.__getattribute__(__import__("pydicom").Dataset(), "PatientBirthDate")
    except AttributeError as exc:
        assert safe_reason(exc) == "AttributeError: 'Dataset' object has no attribute 'PatientBirthDate'"
        assert frames(exc) and frames(exc)[-1].endswith("in test_reason_keeps_what_to_fix_and_drops_values")
    exc = ValueError("Invalid value 'SMITH^JOHN' for 1.2.840.113619.2.55.3.604688119 born 19630412 "
                     "in /var/spool/pacs/DOE_JANE/IM0001.dcm; MRN \"MRN0042731\"\nsecond line 'SECRET'")
    text = safe_reason(exc)
    for value in ("SMITH", "1.2.840", "19630412", "DOE_JANE", "MRN0042731", "SECRET", "second line"):
        assert value not in text, value
    assert text.startswith("ValueError: Invalid value '…' for <uid> born <number> in <path>")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(max_size=40))
def test_no_quoted_value_survives_unless_it_is_a_keyword_or_code_name(value: str, around: str) -> None:
    value = value.replace("'", "").replace('"', "").strip()
    around = around.replace("'", "").replace('"', "")
    out = scrub(f"{around.splitlines()[0] if around.strip() else ''} '{value}' end")
    from connector.safe_reason import _keep_quoted

    if value and not _keep_quoted(value):
        assert f"'{value}'" not in out
    assert "\n" not in out and len(out) <= 200


@pytest.mark.parametrize("message", ["", "   "])
def test_reason_of_an_empty_message_is_the_type(message: str) -> None:
    assert safe_reason(RuntimeError(message)) == "RuntimeError"


def test_third_party_log_lines_are_scrubbed_and_ours_untouched() -> None:
    """highdicom logged an original SOP Instance UID while building the CAC SR (issue 25): a library's
    line loses UIDs, quoted values and paths before it is written; our own lines are left as they are."""
    import json
    import logging

    from connector.logsetup import JsonFormatter

    def line(logger: str, msg: str) -> str:
        record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, (), None)
        return str(json.loads(JsonFormatter().format(record))["msg"])

    uid = "1.2.826.0.1.3680043.2.1125.1.23456789"
    out = line("highdicom.sr.sop", f"referenced instance {uid} of 'DOE^JANE' read from /srv/pacs/DOE/1.dcm")
    assert uid not in out and "DOE" not in out and out == "referenced instance <uid> of '…' read from <path>"
    assert line("connector.infer.runner", "cac model loaded: cac-synthetic 2.0.0") \
        == "cac model loaded: cac-synthetic 2.0.0"
