"""Start-up recovery against a real spool and state DB: cleans up, registers orphans, idempotent."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from connector.config import load_config
from connector.ingest.intake import Intake
from connector.ingest.recovery import recover
from connector.store.layout import SiteLayout
from connector.store.state import PROCESSING, instance_key
from connector.site_db import open_state
from tests.support.daemon import init_site
from tests.support.dicomfiles import dataset_bytes


def test_recovery_cleans_partials_registers_orphans_resets_leases_and_is_idempotent(tmp_path: Path,
                                                                                     small_study) -> None:
    _, files = small_study
    config = load_config(init_site(tmp_path / "site"), environ={})
    layout = SiteLayout.from_config(config)
    store = open_state(layout.state_db)
    intake = Intake(layout, store)
    # one instance received normally, and its study leased by a worker that then died
    part = layout.partial / "a.part"
    shutil.copy(files[0], part)
    outcome = intake.ingest_partial(part, source="scp")
    store.mark_stable(0, now=time.time() + 1)
    assert store.lease_study("worker-1", lease_seconds=3600) == outcome.study_key
    # a crash mid-receive, and a crash between rename and commit (file without row)
    (layout.partial / "tmpabc.dcm").write_bytes(b"half an object")
    (layout.incoming / "ff" / "stray.dcm.part").write_bytes(b"half")
    from pydicom import dcmread

    orphan_uid = dcmread(files[1], stop_before_pixels=True).SOPInstanceUID
    orphan = layout.spool / layout.incoming_relpath(instance_key(orphan_uid))
    shutil.copy(files[1], orphan)
    junk = layout.incoming / "00" / ("0" * 32 + ".dcm")
    junk.write_bytes(b"not dicom at all")

    first = recover(intake)
    assert first.partial_removed == 2
    assert first.orphans_registered == 1 and first.orphans_quarantined == 1
    assert first.leases_reset == 1
    # the lease went back, then the orphan (same study) re-opened the study for more instances
    assert store.study(outcome.study_key)["state"] == "receiving"
    assert store.find_instance(orphan_uid) is not None
    assert dataset_bytes(orphan) == dataset_bytes(files[1])
    assert not junk.exists() and len(list(layout.quarantine.glob("ingest/*.json"))) == 1

    second = recover(intake)
    assert second.as_dict() == {"partial_removed": 0, "orphans_registered": 0, "orphans_quarantined": 0,
                                "leases_reset": 0, "missing_files": 0}
    assert store.counts()["instances_received"] == 2
    assert store.study(outcome.study_key)["state"] != PROCESSING
    store.close()


def test_study_timer_survives_restart(tmp_path: Path, small_study) -> None:
    """The quiet period is measured from the DB, so a restart neither loses nor restarts it."""
    _, files = small_study
    config = load_config(init_site(tmp_path / "site"), environ={})
    layout = SiteLayout.from_config(config)
    store = open_state(layout.state_db)
    part = layout.partial / "a.part"
    shutil.copy(files[0], part)
    received_at = time.time()
    key = Intake(layout, store).ingest_partial(part, source="scp").study_key
    store.close()
    reopened = open_state(layout.state_db)  # "restart"
    assert reopened.mark_stable(90, now=received_at + 60) == []
    assert reopened.mark_stable(90, now=received_at + 91) == [key]
    reopened.close()
