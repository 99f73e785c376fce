"""Fixtures for the backfill tests: a real Orthanc as the hospital PACS holding tiny synthetic studies
across dates and modalities, and the connector registered there as a modality (REST API)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import MRImageStorage

from connector.config import Config, load_config
from connector.synthetic import SyntheticStudy, ct_slices, pet_slices, write_series
from tests.support.orthanc import OrthancServer

PACS_AET = "HOSPITALPACS"
OUR_AET = "SITECONN"


@dataclass
class PacsStudy:
    name: str
    date: str
    modalities: tuple[str, ...]
    description: str
    study: SyntheticStudy
    files: list[Path] = field(default_factory=list)

    @property
    def sop_uids(self) -> set[str]:
        return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in self.files}


def make_study(folder: Path, name: str, date: str, modalities: tuple[str, ...], description: str,
               hour: int = 8, per_series: int = 1, study_time: str | None = None) -> PacsStudy:
    """A tiny study (16x16 pixels, ``per_series`` instances per modality) on ``date`` (at ``hour``:30:15,
    or at ``study_time``)."""
    study = SyntheticStudy(study_date=date, study_time=study_time or f"{hour:02d}3015")
    files: list[Path] = []
    for modality in modalities:
        if modality == "PT":
            datasets = list(pet_slices(study, per_series, size=16))
        else:
            datasets = list(ct_slices(study, per_series, rows=16, cols=16))
            if modality == "MR":
                for ds in datasets:
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
                    ds.Modality = "MR"
        for ds in datasets:
            ds.StudyDescription = description
        files += write_series(iter(datasets), folder / name / modality, modality)
    return PacsStudy(name, date, modalities, description, study, files)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PacsStudy]:
    """Five studies: three in 2024-03-01..03, two of them with PET; a CT-only and an MR one; one after."""
    folder = tmp_path_factory.mktemp("pacs-studies")
    specs = [("petct1", "20240301", ("CT", "PT"), "PET CT CARDIAC REST STRESS"),
             ("ct2", "20240302", ("CT",), "CT CALCIUM SCORE"),
             ("mr2", "20240302", ("MR",), "MR BRAIN"),
             ("petct3", "20240303", ("CT", "PT"), "PET CT CARDIAC VIABILITY"),
             ("petct5", "20240305", ("CT", "PT"), "PET CT CARDIAC REST STRESS")]
    return {name: make_study(folder, name, date, mods, desc) for name, date, mods, desc in specs}


def register_connector(pacs: OrthancServer, port: int, aet: str = OUR_AET) -> None:
    """Tell Orthanc where our AE title lives (C-MOVE destination; allowed to C-FIND/C-GET)."""
    pacs.request("PUT", f"/modalities/{aet.lower()}", {"AET": aet, "Host": "127.0.0.1", "Port": port})


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET) as server:
        yield server


def load(orthanc: OrthancServer, studies: list[PacsStudy]) -> None:
    for s in studies:
        for f in s.files:
            orthanc.upload(f)


def pacs_settings(orthanc: OrthancServer, **extra: Any) -> dict[str, Any]:
    """SITE_CONNECTOR__ overrides (ConnectorProcess keyword form) pointing the connector at ``orthanc``."""
    return {"pacs__host": "127.0.0.1", "pacs__port": orthanc.dicom_port, "pacs__ae_title": PACS_AET,
            "backfill__poll_seconds": 0.3, "backfill__retry_backoff_seconds": 0, **extra}


def in_process_config(data_dir: Path, orthanc: OrthancServer, **extra: Any) -> Config:
    env = {"SITE_CONNECTOR__STORAGE__DATA_DIR": str(data_dir), "SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
           "SITE_CONNECTOR__STORAGE__FSYNC": "false"}
    for key, value in pacs_settings(orthanc, **extra).items():
        section, name = key.split("__", 1)
        env[f"SITE_CONNECTOR__{section.upper()}__{name.upper()}"] = str(value)
    return load_config(None, env)


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)
