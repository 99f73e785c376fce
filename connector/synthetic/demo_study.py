"""The demo's PET/CT study: a chest phantom with coronary calcium as the CT, beside synthetic PET."""

from __future__ import annotations

from pathlib import Path

from connector.synthetic.phantom_series import write_phantom
from connector.synthetic.phantoms import make_phantom
from connector.synthetic.studies import SyntheticStudy, pet_slices, write_series


def write_demo_study(folder: Path, *, ct_slices: int | None = None, seed: int = 7,
                     study: SyntheticStudy | None = None) -> list[Path]:
    """A PET/CT study whose CT attenuation series is a chest phantom with coronary calcium.

    The CT comes from :mod:`connector.synthetic.phantoms` (the anatomy the bundled CAC model was trained
    on), relabelled with the study's synthetic patient so that both series form one study.
    """
    study = study or SyntheticStudy()
    kw: dict[str, object] = {"plaque_count": 4}
    if ct_slices is not None:
        kw["n_slices"] = ct_slices
    phantom = make_phantom(seed, **kw)
    p = study.patient
    identity = {
        "PatientName": p.name, "PatientID": p.patient_id, "IssuerOfPatientID": p.issuer,
        "PatientBirthDate": p.birth_date, "PatientSex": p.sex, "PatientAge": "077Y",
        "AccessionNumber": study.accession, "StudyDate": study.study_date, "SeriesDate": study.study_date,
        "StudyTime": study.study_time, "InstitutionName": study.institution,
        "StudyDescription": "PET CT CARDIAC REST STRESS", "FrameOfReferenceUID": study.frame_of_reference_uid,
    }
    paths = write_phantom(phantom, folder / "ct", study_uid=study.study_uid, extra=identity)
    paths += write_series(pet_slices(study, 20), folder / "pt", "PT")
    return paths
