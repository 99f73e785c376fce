"""Synthetic, clearly fake DICOM for tests, benchmarks and the demo: nothing here is patient data.

- :mod:`.studies`: synthetic patients and PET/CT studies (random pixels), written as files.
- :mod:`.phantoms`: chest phantoms with coronary and other calcium, with their true Agatston score.
- :mod:`.phantom_series`: a phantom written as a CT series.
- :mod:`.demo_study`: the demo's study, a phantom CT beside synthetic PET.
"""

from connector.synthetic.demo_study import write_demo_study
from connector.synthetic.studies import (
    IMPLEMENTATION_UID,
    SyntheticPatient,
    SyntheticStudy,
    ct_slices,
    pet_slices,
    today_da,
    with_file_meta,
    write_pet_ct_study,
    write_series,
)

__all__ = [
    "IMPLEMENTATION_UID", "SyntheticPatient", "SyntheticStudy", "ct_slices", "pet_slices", "today_da",
    "with_file_meta", "write_demo_study", "write_pet_ct_study", "write_series",
]
