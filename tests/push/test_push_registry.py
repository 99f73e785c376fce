"""The dev registry as an HTTP server: auth everywhere, STOW-RS checks, QIDO-RS, JSON API, idempotency."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import pydicom
import pytest

from connector.push.stow import MultipartBody, gzip_stream, parse_stow_response
from devregistry import Faults, RegistryServer
from tests.push.conftest import Site
from tests.support.waiting import wait_for
from tests.support.net import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def _partial_files(registry: RegistryServer) -> list[Path]:
    """Received data not yet stored (empty files are spares created ahead of need)."""
    found = []
    for path in registry.store.tmp_dir.iterdir():
        try:
            if path.stat().st_size > 0:
                found.append(path)
        except FileNotFoundError:  # removed while we looked
            continue
    return found


def _client(registry: RegistryServer, site: Site) -> httpx.Client:
    return httpx.Client(base_url=registry.url, timeout=30,
                        headers={"Authorization": f"Bearer {site.token_file.read_text().strip()}"})


def _stow(client: httpx.Client, files: list[Path], key: str = "k1", path: str = "/dicomweb/studies") -> httpx.Response:
    body = MultipartBody(files)
    return client.post(path, content=body.stream(), headers={
        "Content-Type": body.content_type, "Content-Length": str(body.content_length()),
        "Accept": "application/dicom+json", "Idempotency-Key": key})


@pytest.mark.parametrize("method,path", [
    ("GET", "/dicomweb/studies"), ("GET", "/dicomweb/studies/1.2.3/series"), ("GET", "/api/v1/subjects"),
    ("GET", "/api/v1/results"), ("GET", "/api/v1/events"), ("GET", "/api/v1/stats"), ("GET", "/api/v1/manifests"),
    ("GET", "/api/v1/instances/1.2.3"), ("POST", "/dicomweb/studies"), ("PUT", "/api/v1/subjects/TEST01-X"),
    ("POST", "/api/v1/results"), ("POST", "/api/v1/events"), ("POST", "/api/v1/studies/1.2.3/manifest"),
    ("GET", "/no/such/thing"),
])
def test_every_endpoint_requires_the_token(registry: RegistryServer, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}):
        resp = httpx.request(method, registry.url + path, headers={**headers, "Idempotency-Key": "k"},
                             content=b"{}" if method != "GET" else None, timeout=10)
        assert resp.status_code == 401, (method, path, headers)
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert registry.store.stats()["stow_requests"] == 0


def test_stow_stores_and_qido_counts(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=5, pet=3)
    with _client(registry, site) as client:
        resp = _stow(client, study.files)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/dicom+json")
        result = parse_stow_response(resp.content)
        assert result.stored == study.sop_uids and not result.failed

        studies = client.get("/dicomweb/studies").json()
        assert len(studies) == 1
        s = studies[0]
        assert s["0020000D"]["Value"] == [study.study_uid]
        assert s["00201208"]["Value"] == [8] and s["00201206"]["Value"] == [2]
        assert s["00100020"]["Value"] == [study.pseudonym]
        assert sorted(s["00080061"]["Value"]) == ["CT", "PT"]
        assert client.get("/dicomweb/studies", params={"PatientID": "nobody"}).json() == []

        series = client.get(f"/dicomweb/studies/{study.study_uid}/series").json()
        by_modality = {x["00080060"]["Value"][0]: x["00201209"]["Value"][0] for x in series}
        assert by_modality == {"CT": 5, "PT": 3}

        ct_series = next(x for x in series if x["00080060"]["Value"] == ["CT"])["0020000E"]["Value"][0]
        instances = client.get(f"/dicomweb/studies/{study.study_uid}/series/{ct_series}/instances").json()
        assert len(instances) == 5
        one = next(p for p in study.files if p.stem == instances[0]["00080018"]["Value"][0])
        wado = client.get(f"/dicomweb/studies/{study.study_uid}/series/{ct_series}/instances/{one.stem}")
        assert wado.status_code == 200 and one.read_bytes() in wado.content

        info = client.get(f"/api/v1/instances/{one.stem}").json()
        assert info["sha256"] == hashlib.sha256(one.read_bytes()).hexdigest() and info["size"] == one.stat().st_size
    stored = registry.store.stats()
    assert (stored["instances"], stored["files"], stored["duplicates"]) == (8, 8, 0)


def test_rejects_objects_not_marked_de_identified(site: Site, registry: RegistryServer, tmp_path: Path) -> None:
    study = site.deid_study(ct=2, pet=1)
    marked_off = tmp_path / "identified.dcm"
    ds = pydicom.dcmread(study.files[0])
    del ds.PatientIdentityRemoved
    ds.SOPInstanceUID = "2.25.1234567"
    ds.save_as(marked_off)
    with _client(registry, site) as client:
        resp = _stow(client, [marked_off, *study.files[1:]])
        result = parse_stow_response(resp.content)
        assert resp.status_code == 202
        assert result.failed == {"2.25.1234567": 0xC000}
        assert result.stored == {p.stem for p in study.files[1:]}
        only_bad = _stow(client, [marked_off], key="k2")
        assert only_bad.status_code == 409 and parse_stow_response(only_bad.content).failed == {"2.25.1234567": 0xC000}
    assert registry.store.instance("2.25.1234567") is None
    assert registry.store.stats()["rejected_identity"] == 2


def test_duplicates_are_counted_and_stored_once(site: Site, registry: RegistryServer, tmp_path: Path) -> None:
    study = site.deid_study(ct=3, pet=0)
    with _client(registry, site) as client:
        assert _stow(client, study.files).status_code == 200
        again = _stow(client, study.files, key="k2")
        assert again.status_code == 200 and parse_stow_response(again.content).stored == study.sop_uids
        changed = tmp_path / "changed.dcm"
        ds = pydicom.dcmread(study.files[0])
        ds.SeriesDescription = "CHANGED"
        ds.save_as(changed)
        conflict = _stow(client, [changed], key="k3")
        assert conflict.status_code == 409
        assert parse_stow_response(conflict.content).failed == {study.files[0].stem: 0x0111}
    stats = registry.store.stats()
    assert (stats["instances"], stats["files"], stats["duplicates"], stats["conflicts"]) == (3, 3, 3, 1)
    held = registry.store.instance_file(registry.store.instance(study.files[0].stem))
    assert held.read_bytes() == study.files[0].read_bytes()  # the first copy is kept


def test_stow_with_study_in_the_path_checks_it(site: Site, registry: RegistryServer) -> None:
    a, b = site.deid_study(ct=1, pet=0), site.deid_study(ct=1, pet=0)
    with _client(registry, site) as client:
        resp = _stow(client, [a.files[0], b.files[0]], path=f"/dicomweb/studies/{a.study_uid}")
        result = parse_stow_response(resp.content)
        assert resp.status_code == 202 and result.stored == {a.files[0].stem}
        assert result.failed == {b.files[0].stem: 0xA900}


def test_gzip_and_chunked_bodies(site: Site, registry: RegistryServer) -> None:
    study = site.deid_study(ct=3, pet=1)
    body = MultipartBody(study.files)
    with _client(registry, site) as client:
        resp = client.post("/dicomweb/studies", content=gzip_stream(body.stream()), headers={
            "Content-Type": body.content_type, "Content-Encoding": "gzip", "Idempotency-Key": "gz"})
        assert resp.status_code == 200 and parse_stow_response(resp.content).stored == study.sop_uids
    for path in study.files:
        assert registry.store.instance_sha256(path.stem) == hashlib.sha256(path.read_bytes()).hexdigest()
    raw = b"".join(MultipartBody(study.files).stream())
    assert len(zlib.compress(raw, 1)) < len(raw)  # the synthetic pixel data does compress


def test_a_body_cut_short_stores_nothing_from_it(site: Site, registry: RegistryServer) -> None:
    class Seen(Faults):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def instance_failure(self, sop_instance_uid: str) -> int | None:
            self.seen.append(sop_instance_uid)
            return None

    registry.faults = seen = Seen()
    study = site.deid_study(ct=2, pet=0, rows=128)
    body = MultipartBody(study.files, boundary="cut-boundary")
    data = b"".join(body.stream())
    cut = data.index(b"--cut-boundary", 10) + 2000  # the whole first part and a bit of the second
    host, port = registry.url.removeprefix("http://").split(":")
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\nContent-Type: {body.content_type}\r\n"
            f"Content-Length: {len(data)}\r\nIdempotency-Key: cut\r\n"
            f"Authorization: Bearer {site.token_file.read_text().strip()}\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + data[:cut])
        wait_for(lambda: seen.seen)  # the first part arrived whole and was checked
    wait_for(lambda: not _partial_files(registry))
    assert seen.seen == [study.files[0].stem]
    stats = registry.store.stats()
    assert (stats["instances"], stats["files"], stats["stow_requests"]) == (0, 0, 0)  # never acknowledged
    with _client(registry, site) as client:  # the same batch sent again is stored whole
        assert parse_stow_response(_stow(client, study.files).content).stored == study.sop_uids


def test_json_api_idempotency_and_privacy_guard(site: Site, registry: RegistryServer) -> None:
    with _client(registry, site) as client:
        put = client.put("/api/v1/subjects/TEST01-AAAA", json={"sex": "F", "site": "TEST01"},
                         headers={"Idempotency-Key": "s1"})
        assert put.status_code == 201
        replay = client.put("/api/v1/subjects/TEST01-AAAA", json={"sex": "F", "site": "TEST01"},
                            headers={"Idempotency-Key": "s1"})
        assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
        assert client.put("/api/v1/subjects/TEST01-AAAA", json={"sex": "M"},
                          headers={"Idempotency-Key": "s1"}).status_code == 422
        assert client.put("/api/v1/subjects/TEST01-AAAA", json={"sex": "M"},
                          headers={"Idempotency-Key": "s2"}).status_code == 200
        assert client.put("/api/v1/subjects/TEST01-B", json={"sex": "M"}).status_code == 400  # no key
        leak = client.put("/api/v1/subjects/TEST01-C", json={"PatientName": "X"}, headers={"Idempotency-Key": "s3"})
        assert leak.status_code == 422
        assert client.get("/api/v1/subjects").json()["subjects"] == [
            {"pseudonym": "TEST01-AAAA", "sex": "M", "puts": 2}]

        for _ in range(2):
            ev = client.post("/api/v1/events", json={"pseudonym": "TEST01-AAAA", "type": "mi"},
                             headers={"Idempotency-Key": "e1"})
            assert ev.status_code == 201
        assert len(client.get("/api/v1/events").json()["events"]) == 1
        res = client.post("/api/v1/results", json={"agatston": 12.5}, headers={"Idempotency-Key": "r1"})
        assert res.status_code == 201 and client.get("/api/v1/results").json()["results"][0]["agatston"] == 12.5
        bad = client.post("/api/v1/studies/1.2.3/manifest", json={"x": 1}, headers={"Idempotency-Key": "m0"})
        assert bad.status_code == 400
        manifest = client.post("/api/v1/studies/1.2.3/manifest", json={"sop_instance_uids": ["1.2.3.4"]},
                               headers={"Idempotency-Key": "m1"}).json()
        assert manifest["complete"] is False and manifest["missing"] == ["1.2.3.4"]
    assert registry.store.stats()["idempotent_replays"] == 2


def test_cli_serve_creates_a_private_token_and_serves(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "reg"
    proc = subprocess.Popen([sys.executable, "-m", "connector", "registry", "serve", "--data", str(data),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30)
        token_file = data / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/stats", timeout=10).status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/api/v1/stats", headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
        assert ok.status_code == 200 and ok.json()["instances"] == 0
        stats = subprocess.run([sys.executable, "-m", "connector", "registry", "stats", "--url",
                                f"http://127.0.0.1:{port}", "--token-file", str(token_file), "--json"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert stats.returncode == 0 and json.loads(stats.stdout)["subjects"] == 0
        down = subprocess.run([sys.executable, "-m", "connector", "registry", "stats", "--url",
                               f"http://127.0.0.1:{free_port()}", "--token-file", str(token_file)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert down.returncode == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert token.encode() not in out  # the token is never printed
    assert os.path.exists(data / "registry.db")


def test_openapi_document_covers_every_json_route() -> None:
    import yaml

    from devregistry.server import ROUTES

    doc = yaml.safe_load((ROOT / "docs" / "registry-api.yaml").read_text())
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops if method != "parameters"}
    for method, pattern, _handler in ROUTES:
        if not pattern.pattern.startswith("/api/"):
            continue
        as_openapi = pattern.pattern.replace("([0-9.]+)", "{x}").replace("([^/]+)", "{x}")
        matches = [(p, m) for p, m in documented if m == method.lower()
                   and re.sub(r"\{[^}]+\}", "{x}", p) == as_openapi]
        assert matches, f"{method} {pattern.pattern} is not in docs/registry-api.yaml"
    assert "STOW-RS" in doc["info"]["description"] and "0xC000" in doc["info"]["description"]
