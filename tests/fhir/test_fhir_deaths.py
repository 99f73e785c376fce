"""FHIR deaths: a real HTTP server on 127.0.0.1 serving Patient searches (pages, 429 with
Retry-After, 401, SMART backend services) drives the poller; a Bundle file imports. Events are the
same as a coordinator's CSV would produce (one event for the same death from two sources)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connector.followup.feeds import read_counts
from tests.followup.conftest import FollowupSite, days_between, make_site, write_csv

SYSTEM = "urn:oid:1.2.826.0.1.99999.1"
TOKEN = "fhir-test-token-7d1e"


class FhirServer:
    """Patients by identifier; ``page_size`` per page; the first ``busy`` requests get 429."""

    def __init__(self, patients: list[dict[str, Any]], *, page_size: int = 1, busy: int = 0,
                 token: str = TOKEN, public_key: Any = None) -> None:
        self.patients, self.page_size, self.busy, self.token = patients, page_size, busy, token
        self.public_key = public_key
        self.requests: list[dict[str, list[str]]] = []
        self.issued: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # the SMART token endpoint
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                if not server.check_assertion(form.get("client_assertion", [""])[0]):
                    self._send(401, {"error": "invalid_client"})
                    return
                token = f"smart-{len(server.issued)}"
                server.issued.append(token)
                self._send(200, {"access_token": token, "token_type": "bearer", "expires_in": 300})

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                server.requests.append(query)
                allowed = {f"Bearer {server.token}"} | {f"Bearer {t}" for t in server.issued}
                if self.headers.get("Authorization") not in allowed:
                    self._send(401, {"resourceType": "OperationOutcome"})
                    return
                if server.busy > 0:
                    server.busy -= 1
                    self._send(429, {"resourceType": "OperationOutcome"}, {"Retry-After": "1"})
                    return
                if "page" in query:
                    wanted, start = json.loads(base64.urlsafe_b64decode(query["page"][0])), int(query["at"][0])
                else:
                    wanted, start = [v.split("|", 1) for v in query["identifier"][0].split(",")], 0
                found = [p for p in server.patients
                         if any([i["system"], i["value"]] in wanted for i in p.get("identifier", []))]
                page = found[start : start + server.page_size]
                bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                                          "entry": [{"resource": p, "search": {"mode": "match"}} for p in page]}
                if start + server.page_size < len(found):
                    token = base64.urlsafe_b64encode(json.dumps(wanted).encode()).decode()
                    bundle["link"] = [{"relation": "next", "url": f"{server.url}/Patient?page={token}"
                                                                  f"&at={start + server.page_size}"}]
                self._send(200, bundle)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def check_assertion(self, jwt: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if self.public_key is None or jwt.count(".") != 2:
            return False
        head, claims, sig = jwt.split(".")
        pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
        try:
            self.public_key.verify(base64.urlsafe_b64decode(pad(sig)), f"{head}.{claims}".encode(),
                                   padding.PKCS1v15(), hashes.SHA384())
        except InvalidSignature:
            return False
        body = json.loads(base64.urlsafe_b64decode(pad(claims)))
        return body["iss"] == "connector-test" and body["aud"].endswith("/token") and body["exp"] > time.time()

    def __enter__(self) -> FhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def patient(mrn: str, *, died: str | None = None, deceased: bool | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"resourceType": "Patient", "id": f"p-{mrn.lower()}",
                         "identifier": [{"system": "urn:other", "value": f"X{mrn}"}, {"system": SYSTEM, "value": mrn}],
                         "name": [{"family": "SYNTHFAMILY"}]}
    if died is not None:
        p["deceasedDateTime"] = died
    if deceased is not None:
        p["deceasedBoolean"] = deceased
    return p


def _site(tmp_path: Path, server_url: str, extra: str = "") -> FollowupSite:
    token_file = tmp_path / "fhir.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    auth = extra or f'token_file = "{token_file}"\n'
    return make_site(tmp_path / "site", f'[fhir]\nbase_url = "{server_url}"\nbatch_size = 2\n'
                                        f'identifier_systems = ["HOSP-A={SYSTEM}"]\nmax_retry_after_seconds = 5\n'
                                        + auth)


@pytest.fixture
def patients() -> list[dict[str, Any]]:
    return [patient("F-1", died="2023-03-04T23:30:00+01:00"), patient("F-2"), patient("F-3", deceased=True),
            patient("F-4", died="2024-01-15"), patient("F-5", deceased=False),
            patient("NOT-LINKED-1", died="2022-02-02")]


def test_poll_pages_retry_after_and_only_linked_patients(tmp_path: Path, patients: list[dict[str, Any]]) -> None:
    with FhirServer(patients, page_size=1, busy=1) as server:
        site = _site(tmp_path, server.url)
        try:
            linked = {m: site.add_patient(m, study_date="20200202") for m in ("F-1", "F-2", "F-3", "F-4", "F-5")}
            site.layout.ensure()
            started = time.monotonic()
            rc, out, err = site.cli("fhir-poll", "--json")
            elapsed = time.monotonic() - started
            assert rc == 1, err  # F-3 is dead without a date: it cannot be sent, and says so
            result = json.loads(out)
            assert (result["asked"], result["deaths"], result["queued"], result["undated"]) == (5, 2, 2, 1)
            assert elapsed >= 1.0  # Retry-After was honoured
            asked = [v for q in server.requests if "identifier" in q for v in q["identifier"][0].split(",")]
            assert set(asked) == {f"{SYSTEM}|{m}" for m in linked}  # linked patients only
            assert len(asked) == 5 + 2  # each once, plus the first batch again after the 429
            assert all(len(q["identifier"][0].split(",")) <= 2 for q in server.requests if "identifier" in q)
            assert any("page" in q for q in server.requests)  # next links were followed
            events = {body["pseudonym"]: body for _, body in site.outbox_events()}
            assert set(events) == {linked["F-1"].pseudonym, linked["F-4"].pseudonym}
            assert events[linked["F-1"].pseudonym]["days_from_index"] == days_between("20200202", "2023-03-04")
            assert events[linked["F-4"].pseudonym]["source"] == "medical_records"
            assert "F-1" not in out and "F-4" not in out
            rc, out, _ = site.cli("fhir-poll", "--json")  # nothing new the second time
            assert json.loads(out)["queued"] == 0 and len(site.outbox_events()) == 2
            counts = read_counts(site.store().conn)["fhir"]
            assert counts["sent"] == 2 and counts["errors"] == 2 and counts["received"] == 10
        finally:
            site.close()


def test_401_is_a_credentials_problem(tmp_path: Path, patients: list[dict[str, Any]]) -> None:
    with FhirServer(patients, token="another-token") as server:
        site = _site(tmp_path, server.url)
        try:
            site.add_patient("F-1")
            site.layout.ensure()
            rc, out, err = site.cli("fhir-poll")
            assert rc == 2 and "401" in err and TOKEN not in err + out
            assert site.outbox_events() == []
            assert len(server.requests) == 1  # no hammering with a wrong token
        finally:
            site.close()


def test_smart_backend_services_client_credentials(tmp_path: Path, patients: list[dict[str, Any]]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    with FhirServer(patients, page_size=5, public_key=key.public_key()) as server:
        site = _site(tmp_path, server.url, f'client_id = "connector-test"\ntoken_url = "{server.url}/token"\n'
                                           f'private_key_file = "{key_file}"\n')
        try:
            site.add_patient("F-4", study_date="20200202")
            site.layout.ensure()
            rc, out, err = site.cli("fhir-poll", "--json")
            assert rc == 0, err
            assert json.loads(out)["queued"] == 1 and server.issued == ["smart-0"]
        finally:
            site.close()


def test_bundle_import_and_the_same_death_from_csv_is_one_event(tmp_path: Path,
                                                               patients: list[dict[str, Any]]) -> None:
    site = _site(tmp_path, "http://127.0.0.1:9")
    try:
        a = site.add_patient("F-1", study_date="20200202")
        site.layout.ensure()
        bundle = tmp_path / "export.json"
        bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": p} for p in patients]}))
        rc, out, err = site.cli("import", str(bundle), "--json")
        assert rc == 0, err
        result = json.loads(out)
        assert result["queued"] == 1 and result["rejected"]["unknown_patient"] == 3  # F-3, F-4, NOT-LINKED-1
        assert "NOT-LINKED-1" not in out
        (key, body), = site.outbox_events()
        assert body["pseudonym"] == a.pseudonym and body["days_from_index"] == days_between("20200202", "2023-03-04")
        csv = write_csv(tmp_path / "deaths.csv", [{"patient_id": "F-1", "issuer": "HOSP-A", "event": "death",
                                                  "event_date": "2023-03-04", "source": "death_index"}])
        summary = site.run(csv, today=date.today())
        assert summary.unchanged == 1 and summary.queued == 0 and len(site.outbox_events()) == 1
        not_bundle = tmp_path / "not.json"
        not_bundle.write_text('{"resourceType": "Patient"}')
        rc, _, err = site.cli("import", str(not_bundle))
        assert rc == 1 and "Bundle" in err
    finally:
        site.close()


def test_scheduled_job_counts_a_server_failure_and_carries_on(tmp_path: Path,
                                                              patients: list[dict[str, Any]]) -> None:
    from connector.fhir.deaths import scheduled_job

    with FhirServer(patients, busy=100) as server:  # always 429: longer than max_retry_after_seconds (5)
        site = _site(tmp_path, server.url)
        try:
            site.add_patient("F-1")
            site.layout.ensure()
            store = site.store()
            job = scheduled_job(site.config, store, site.provider())
            job()  # must not raise: the scheduler runs it again next interval
            assert read_counts(store.conn)["fhir"]["errors"] == 1
            server.busy = 0
            job()
            assert len(site.outbox_events()) == 1
        finally:
            site.close()
