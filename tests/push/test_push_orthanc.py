"""The same push against a real Orthanc with its DICOMweb plugin as the STOW-RS target."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.outbox import outbox_counts
from connector.push.worker import PushWorker
from connector.push.queueing import queue_study
from devregistry import RegistryServer
from tests.push.conftest import Site, subject_for
from tests.support.orthanc import OrthancServer


def _push(site: Site, config) -> None:
    worker = PushWorker(config, site.store, site.layout)
    worker.start()
    try:
        assert worker.drain(90), outbox_counts(site.store)
    finally:
        worker.stop()


@pytest.mark.slow
def test_stow_rs_to_orthanc_dicomweb(site: Site, registry: RegistryServer, tmp_path: Path) -> None:
    study = site.deid_study(ct=8, pet=3, rows=128)
    local = {p.stem: p.read_bytes() for p in study.files}
    queue_study(site.outbox, study_uid=study.study_uid, pseudonym=study.pseudonym, subject=subject_for(study),
                files=study.files, layout=site.layout, max_instances=4)
    with OrthancServer(tmp_path / "orthanc", dicomweb=True) as orthanc:
        config = site.config(dicomweb_url=f"{orthanc.url}/dicom-web", api_url=registry.url, retention_hours=-1)
        _push(site, config)

        series = orthanc.request("GET", f"/dicom-web/studies/{study.study_uid}/series")
        counts = {s["00080060"]["Value"][0]: int(s["00201209"]["Value"][0]) for s in series}
        assert counts == {"CT": 8, "PT": 3}
        for sop, data in local.items():
            [found] = orthanc.request("POST", "/tools/lookup", sop.encode())
            assert orthanc.request("GET", f"/instances/{found['ID']}/file") == data  # byte for byte
        assert registry.store.manifests()[0]["manifest"]["instance_count"] == 11
        assert registry.store.subjects()[0]["pseudonym"] == study.pseudonym

        # A crash after sending but before recording the acknowledgement: every batch goes again.
        with site.store.write() as conn:
            conn.execute("UPDATE outbox_items SET state='pending', acked_at=NULL")
            conn.execute("UPDATE outbox_jobs SET state='leased', lease_owner='crashed', lease_until=0 "
                         "WHERE kind='stow'")
        _push(site, config)
        assert len(orthanc.request("GET", "/instances")) == 11  # Orthanc answered "stored"; nothing doubled
        c = outbox_counts(site.store)
        assert (c["instances_pushed"], c["failed"], c["outbox_pending"]) == (11, 0, 0)
