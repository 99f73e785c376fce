"""Through the daemon: a localizer with the patient's name and MRN burned in, received by C-STORE,
is quarantined in the de-identification stage; ``[deid] ocr`` reaches the study worker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deid.factory import Planted, StudyUids, base_dataset, encode, leaks
from tests.security.burned_in_images import ct_image, localizer_hu, name_and_mrn
from tests.support.daemon import ConnectorProcess, wait_for_study_state
from tests.support.tools import dcmtk

pytestmark = pytest.mark.slow


def test_daemon_quarantines_burned_in_localizer(tmp_path: Path) -> None:
    uids = StudyUids()
    scouts = StudyUids(study=uids.study, frame_of_reference=uids.frame_of_reference)
    hu = localizer_hu()
    folder = tmp_path / "study"
    folder.mkdir()
    objects = {"scout1.dcm": ct_image(hu, name_and_mrn(), uids=scouts, instance=1),
               "scout2.dcm": ct_image(hu, [], uids=scouts, instance=2)}
    objects.update({f"ax{i}.dcm": base_dataset(Planted(), uids, instance=i) for i in range(1, 5)})
    for name, ds in objects.items():
        (folder / name).write_bytes(encode(ds))

    # "all": every image is read (the default would read 5 of these 6: both scouts, axial 1, 3, 4)
    with ConnectorProcess(tmp_path / "site", deid__ocr="all") as d:
        subprocess.run([dcmtk("storescu"), "-aec", "SITECONN", "127.0.0.1", str(d.port),
                        *map(str, sorted(folder.iterdir()))], check=True, capture_output=True)
        wait_for_study_state(d, "deidentified", timeout=90)
        d.wait_for_log('"study_processed"', timeout=30)
        outgoing = sorted(d.spool.glob("outgoing/*/*.dcm"))
        records = [json.loads(p.read_text()) for p in (d.data_dir / "quarantine" / "deid").glob("*.json")]
        logs = d.logs()
    assert len(outgoing) == 5
    assert [r["reason"] for r in records] == ["burned-in-text:ocr"]
    processed = [json.loads(line[line.index("{"):]) for line in logs.splitlines() if '"study_processed"' in line]
    assert processed and processed[-1]["ocr_images"] == 6, processed
    assert leaks(logs.encode()) == [] and leaks(json.dumps(records).encode()) == []
