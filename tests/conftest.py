"""Shared fixtures. External peers (dcmtk, Orthanc) are real programs; the README's test command
installs them. A missing peer fails the test loudly rather than skipping it."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.synthetic import SyntheticStudy, write_pet_ct_study


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticStudy, list[Path]]:
    """A synthetic PET/CT study: 12 CT slices (128x128) and 6 PET slices."""
    folder = tmp_path_factory.mktemp("small-study")
    return write_pet_ct_study(folder, ct_count=12, pet_count=6, ct_rows=128)
