"""Backfill against a real Orthanc, in process: the query's filters, C-GET through the durable ingest,
retries of an incomplete study, already-present studies, daily mode, pause/cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from connector.backfill.query import PacsUnavailable, StudyFilter, find_studies
from connector.backfill.runner import Runner, ensure_daily_job
from connector.backfill.summary import job_summaries
from connector.backfill.worklist import FoundStudy, Worklist
from connector.store.layout import SiteLayout
from connector.site_db import open_state
from tests.backfill.conftest import day, in_process_config, load, register_connector
from tests.support.dicomfiles import dataset_bytes, stored_by_sop


def _site(tmp_path: Path, orthanc, **extra):
    config = in_process_config(tmp_path / "data", orthanc, **extra)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    return config, layout, open_state(layout.state_db)


def test_query_filters_by_day_modality_description_and_accession(tmp_path: Path, orthanc, catalogue) -> None:
    load(orthanc, list(catalogue.values()))
    register_connector(orthanc, 1)
    config, _, store = _site(tmp_path, orthanc)
    store.close()
    uid = {name: s.study.study_uid for name, s in catalogue.items()}
    found = find_studies(config, StudyFilter(day("2024-03-01"), day("2024-03-03"), modalities=("PT",)))
    assert {s.study_uid for s in found.studies} == {uid["petct1"], uid["petct3"]}
    assert found.queries == 1 and found.matched == 4 and found.split_days == 0  # one C-FIND for the range
    assert all(s.expected_instances == 2 and set(s.modalities) == {"CT", "PT"} for s in found.studies)
    found = find_studies(config, StudyFilter(day("2024-03-01"), day("2024-03-05"), description="calcium|brain"))
    assert {s.study_uid for s in found.studies} == {uid["ct2"], uid["mr2"]}
    found = find_studies(config, StudyFilter(accessions=(catalogue["mr2"].study.accession,
                                                         catalogue["petct5"].study.accession, "NOSUCH")))
    assert {s.study_uid for s in found.studies} == {uid["mr2"], uid["petct5"]} and found.queries == 3
    found = find_studies(config, StudyFilter(day("2024-03-04"), day("2024-03-04")))
    assert found.studies == [] and found.queries == 1


def test_c_get_files_studies_byte_identical_and_skips_what_is_here(tmp_path: Path, orthanc, catalogue) -> None:
    load(orthanc, list(catalogue.values()))
    register_connector(orthanc, 1)
    config, layout, store = _site(tmp_path, orthanc, pacs__retrieve="get", backfill__max_concurrent=2)
    try:
        wanted = [catalogue["ct2"], catalogue["mr2"], catalogue["petct3"]]
        flt = StudyFilter(accessions=tuple(s.study.accession for s in wanted))
        report = find_studies(config, flt)
        job = Worklist(store).create_job(report.studies, flt.as_dict())
        assert job["queued"] == 3 and job["present"] == 0
        progress: list[int] = []
        run = Runner(config, store, layout, stop=threading.Event(), job_id=job["job"], respect_window=False,
                     on_progress=progress.append).run_until_done()
        assert run.retrieved == 3 and run.failed == 0 and sum(progress) == 4
        stored = stored_by_sop(layout.spool)
        expected = {uid: f for s in wanted for f in s.files for uid in [_sop(f)]}
        assert set(stored) == set(expected)  # exactly these instances, nothing else
        for uid, path in expected.items():
            assert dataset_bytes(stored[uid]) == dataset_bytes(path)
        rows = store.conn.execute("SELECT DISTINCT source FROM instances").fetchall()
        assert rows == [("backfill",)]
        [summary] = job_summaries(store)
        assert (summary["found"], summary["retrieved"], summary["failed"], summary["state"]) == (3, 3, 0, "done")
        assert summary["instances_retrieved"] == 4 and summary["requests"] == 3 and summary["progress"] == 1.0
        # the same studies again (and one more): what is here is not retrieved again
        flt = StudyFilter(day("2024-03-02"), day("2024-03-03"))
        again = Worklist(store).create_job(find_studies(config, flt).studies, flt.as_dict())
        assert again["present"] == 3 and again["queued"] == 0
        assert Worklist(store).job(again["job"])["state"] == "done"
    finally:
        store.close()


def test_incomplete_study_is_retried_then_reported_failed(tmp_path: Path, orthanc, catalogue) -> None:
    load(orthanc, [catalogue["petct1"]])
    register_connector(orthanc, 1)
    config, layout, store = _site(tmp_path, orthanc, pacs__retrieve="get", backfill__max_attempts=3)
    try:
        uid = catalogue["petct1"].study.study_uid
        # the C-FIND said 5 instances; the PACS holds 2: incomplete, retried, then failed with the reason
        job = Worklist(store).create_job([FoundStudy(uid, 5)], {"test": True})["job"]
        unknown = Worklist(store).create_job([FoundStudy("1.2.3.4.999", None)], {"test": True})["job"]
        stop = threading.Event()
        run = Runner(config, store, layout, stop=stop, job_id=job, respect_window=False).run_until_done()
        assert run.failed == 1 and run.retried == 2
        [row] = Worklist(store).studies(job)
        assert row["state"] == "failed" and row["attempts"] == 3 and row["requests"] == 3
        assert row["reason"].startswith("incomplete: 2 of 5 instances")
        [summary] = [j for j in job_summaries(store) if j["job"] == job]
        assert summary["failed"] == 1 and summary["failures"][0]["reason"] == row["reason"]
        run = Runner(config, store, layout, stop=stop, job_id=unknown, respect_window=False).run_until_done()
        [row] = Worklist(store).studies(unknown)
        assert row["state"] == "failed" and "could not process the retrieval (0xC000" in row["reason"]
    finally:
        store.close()


def test_pause_resume_cancel_and_the_window(tmp_path: Path, orthanc, catalogue) -> None:
    load(orthanc, [catalogue["ct2"], catalogue["mr2"]])
    register_connector(orthanc, 1)
    config, layout, store = _site(tmp_path, orthanc, pacs__retrieve="get", backfill__window="00:00-00:01")
    try:
        found = [FoundStudy(catalogue[n].study.study_uid, 1) for n in ("ct2", "mr2")]
        wl = Worklist(store)
        job = wl.create_job(found, {})["job"]
        stop = threading.Event()
        import datetime as dt

        from connector.backfill.runner import window_open
        if window_open(config, dt.datetime.now()):
            pytest.skip("the test runs inside its own closed window (00:00-00:01)")
        assert Runner(config, store, layout, stop=stop).run_pass().retrieved == 0  # window closed
        assert wl.set_job_state(job, "pause") == "paused"
        assert Runner(config, store, layout, stop=stop, job_id=job, respect_window=False).run_pass().retrieved == 0
        assert wl.set_job_state(job, "resume") == "active"
        assert wl.lease("someone-else:1", job_id=job) is not None  # held by a process that is gone
        assert wl.set_job_state(job, "cancel") == "cancelled"
        assert wl.counts(job)["cancelled"] == 1 and wl.release_orphans() == 1
        assert Runner(config, store, layout, stop=stop, job_id=job, respect_window=False).run_pass().retrieved == 0
        with pytest.raises(ValueError):
            wl.set_job_state(job, "resume")
        assert stored_by_sop(layout.spool) == {}
    finally:
        store.close()


def test_daily_mode_queues_the_previous_days_once(tmp_path: Path, orthanc, catalogue) -> None:
    load(orthanc, list(catalogue.values()))
    register_connector(orthanc, 1)
    config, _, store = _site(tmp_path, orthanc, backfill__daily="true", backfill__daily_days=3,
                             backfill__modalities='["PT"]')
    try:
        job = ensure_daily_job(config, store, today=day("2024-03-04"))  # looks at 03-01 .. 03-03
        assert job is not None and ensure_daily_job(config, store, today=day("2024-03-04")) is None
        keys = {r["study_key"] for r in Worklist(store).studies(job)}
        assert keys == {FoundStudy(catalogue[n].study.study_uid, 0).key for n in ("petct1", "petct3")}
        nxt = ensure_daily_job(config, store, today=day("2024-03-06"))  # 03-03 .. 03-05: 03-03 already queued
        counts = Worklist(store).counts(nxt)
        assert counts["queued"] == 1 and counts["present"] == 1
    finally:
        store.close()


def test_unreachable_pacs_is_reported(tmp_path: Path, orthanc) -> None:
    config = in_process_config(tmp_path / "data", orthanc, pacs__port=1, pacs__timeout=2)
    with pytest.raises(PacsUnavailable):
        find_studies(config, StudyFilter(day("2024-03-01"), day("2024-03-01")))


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_echo_pacs_reaches_the_configured_pacs(tmp_path: Path, orthanc) -> None:
    import json
    import os
    import subprocess
    import sys

    register_connector(orthanc, 1)
    env = dict(os.environ, SITE_CONNECTOR__PACS__HOST="127.0.0.1", SITE_CONNECTOR__PACS__PORT=str(orthanc.dicom_port),
               SITE_CONNECTOR__PACS__AE_TITLE="HOSPITALPACS", SITE_CONNECTOR__STORAGE__DATA_DIR=str(tmp_path / "d"))
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "connector", "echo", "--pacs", "--json"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["ok"] and result["port"] == orthanc.dicom_port
    assert (result["called_aet"], result["calling_aet"], result["tls"]) == ("HOSPITALPACS", "SITECONN", False)
    env.pop("SITE_CONNECTOR__PACS__HOST")
    out = subprocess.run([sys.executable, "-m", "connector", "echo", "--pacs"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "[pacs] host" in out.stderr


def test_a_day_the_pacs_cuts_short_is_split_by_time(tmp_path: Path) -> None:
    from connector.backfill.query import QueryFailed
    from tests.backfill.conftest import PACS_AET, make_study
    from tests.support.orthanc import OrthancServer

    # Orthanc ends a C-FIND that hits LimitFindResults with 'cancel' (0xFE00): no silent truncation
    day_studies = [make_study(tmp_path / "s", f"h{h}", "20240301", ("CT",), "CT", hour=h) for h in (8, 9, 15)]
    crowded_second = [make_study(tmp_path / "s", f"c{i}", "20240302", ("CT",), "CT", hour=10) for i in range(2)]
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET, extra_config={"LimitFindResults": 1}) as orthanc:
        load(orthanc, day_studies + crowded_second)
        register_connector(orthanc, 1)
        config = in_process_config(tmp_path / "data", orthanc)
        found = find_studies(config, StudyFilter(day("2024-03-01"), day("2024-03-01")))
        assert {s.study_uid for s in found.studies} == {s.study.study_uid for s in day_studies}
        assert found.split_days == 1 and found.queries == 1 + 2 * len(found.splits)
        assert [s.reason for s in found.splits] == ["status 0xFE00"] * len(found.splits)
        # two studies in the same second, with a limit of one: nothing finer to ask, an error names it
        with pytest.raises(QueryFailed, match="2024-03-02 10:30:15-10:30:15"):
            find_studies(config, StudyFilter(day("2024-03-02"), day("2024-03-02")))


def _tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def cert(name: str, key, issuer_name, issuer_key, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san is not None:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out: dict[str, Path] = {}

    def write(name: str, key, crt) -> None:
        out[name + "_key"] = folder / f"{name}.key"
        out[name + "_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                                         serialization.NoEncryption()))
        out[name] = folder / f"{name}.pem"
        out[name].write_bytes(crt.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    write("ca", ca_key, cert("test CA", ca_key, ca_name, ca_key, True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    write("server", server_key, cert("pacs", server_key, ca_name, ca_key, False,
                                     [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client", client_key, cert("siteconn", client_key, ca_name, ca_key, False, [x509.DNSName("siteconn")]))
    return out


def test_query_and_echo_over_mutual_tls(tmp_path: Path, catalogue) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.backfill.conftest import PACS_AET
    from tests.support.orthanc import OrthancServer

    tls = _tls_files(tmp_path / "tls")
    options = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(tls["server"]),
               "DicomTlsPrivateKey": str(tls["server_key"]), "DicomTlsTrustedCertificates": str(tls["ca"]),
               "DicomTlsRemoteCertificateRequired": True}
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET, extra_config=options) as orthanc:
        load(orthanc, [catalogue["petct1"]])
        register_connector(orthanc, 1)
        files = {"pacs__tls": "true", "pacs__tls_ca_file": str(tls["ca"]), "pacs__tls_cert_file": str(tls["client"]),
                 "pacs__tls_key_file": str(tls["client_key"])}
        config = in_process_config(tmp_path / "data", orthanc, **files)
        found = find_studies(config, StudyFilter(day("2024-03-01"), day("2024-03-01")))
        assert [s.study_uid for s in found.studies] == [catalogue["petct1"].study.study_uid]
        with pytest.raises(PacsUnavailable):  # plain DICOM to a TLS port gets nowhere
            find_studies(in_process_config(tmp_path / "data", orthanc, pacs__timeout=3),
                         StudyFilter(day("2024-03-01"), day("2024-03-01")))
        env = dict(os.environ, SITE_CONNECTOR__STORAGE__DATA_DIR=str(tmp_path / "d"))
        for key, value in {"pacs__host": "127.0.0.1", "pacs__port": str(orthanc.dicom_port),
                           "pacs__ae_title": PACS_AET, **files}.items():
            section, name = key.split("__")
            env[f"SITE_CONNECTOR__{section.upper()}__{name.upper()}"] = value
        out = subprocess.run([sys.executable, "-m", "connector", "echo", "--pacs", "--json"],
                             cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0 and json.loads(out.stdout)["tls"] is True, out.stdout + out.stderr
