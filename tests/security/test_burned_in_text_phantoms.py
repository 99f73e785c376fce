"""False positives of the burned-in text check: none on 200 CT slices of the chest phantoms.

Ten phantoms (the original generator and, every other one, the wide one with sternal wires, stents
and dense bone: the brightest, sharpest structures a slice can hold), 20 slices each, written as
DICOM and de-identified with every image read (``ocr = "all"``). Bones read as single digits are
expected and must not count; nothing may be quarantined.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.study import deidentify_study
from connector.synthetic.phantom_series import write_phantom
from connector.synthetic.phantoms import WIDE, make_phantom

pytestmark = pytest.mark.slow
# A patient of the tests' own (the phantom's default name is part of its Manufacturer value, which
# the tag guard refuses in the output: not what this test is about).
PATIENT = {"PatientName": "ZEBRAFISH^OPHELIANA", "PatientID": "SYN48151623", "AccessionNumber": "ACC9081726"}


def test_no_false_positive_on_200_phantom_slices(tmp_path: Path) -> None:
    engine = DeidEngine.from_rules(None, EphemeralIdentityProvider(site_id="SITE01", secret=bytes(range(32))),
                                   fsync=False)
    study_uid = "1.2.826.0.1.3680043.10.1432.99.7"
    paths: list[Path] = []
    for seed in range(10):
        kw = {"ranges": WIDE} if seed % 2 else {}
        phantom = make_phantom(seed, n_slices=20, **kw)
        paths += write_phantom(phantom, tmp_path / "in" / f"s{seed}", study_uid=study_uid,
                               series_uid=f"{study_uid}.{seed + 1}", extra=PATIENT)
    assert len(paths) == 200

    outcome = deidentify_study(paths, tmp_path / "out", tmp_path / "q", engine, ocr="all")

    assert outcome.quarantined == [] and len(outcome.written) == 200
    assert outcome.privacy.pixels_read_for_text == 200
