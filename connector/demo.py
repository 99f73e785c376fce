"""``site-connector demo``: the whole chain on this machine, in a temporary folder.

It starts the dev registry and the daemon exactly as a site would run them (separate processes,
real sockets on 127.0.0.1), sends a synthetic PET/CT study by C-STORE, waits until the registry
holds it, and reports what the registry received: pseudonym, instance count, and the CAC result
when the CT attenuation series was scored. Nothing leaves the machine and nothing is real patient
data (see :mod:`connector.synthetic`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from connector.config import render_template


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("a demo process exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


@dataclass
class DemoResult:
    pseudonym: str = ""
    instances_sent: int = 0
    instances: int = 0
    subject: dict[str, Any] = field(default_factory=dict)
    manifest: bool = False
    cac: dict[str, Any] | None = None
    dashboard: str = ""
    dashboard_login: dict[str, str] = field(default_factory=dict)
    folder: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"pseudonym": self.pseudonym, "instances_sent": self.instances_sent, "instances": self.instances,
                "subject": self.subject, "manifest": self.manifest, "cac": self.cac, "dashboard": self.dashboard,
                "dashboard_login": self.dashboard_login,
                "folder": self.folder, "seconds": round(self.seconds, 1)}


class Demo:
    def __init__(self, folder: Path | None = None, *, ct_slices: int = 60, timeout: float = 300.0) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="site-connector-demo-"))
        self.ct_slices = ct_slices
        self.timeout = timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.token = secrets.token_urlsafe(24)
        self.registry_port = _free_port()
        self.dicom_port = _free_port()
        self.http_port = _free_port()

    # -- set-up --------------------------------------------------------------------------------

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.folder / log_name, "wb")  # noqa: SIM115 - the process owns it until stop()
        proc = subprocess.Popen([sys.executable, "-m", "connector", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        token_file = self.folder / "registry.token"
        token_file.write_text(self.token)
        os.chmod(token_file, 0o600)
        registry = self._spawn(["registry", "serve", "--data", str(self.folder / "registry"), "--port",
                                str(self.registry_port), "--token-file", str(token_file)], "registry.log")
        _wait_port(self.registry_port, registry)
        site = self.folder / "site"
        site.mkdir()
        config = site / "connector.toml"
        config.write_text(render_template({
            "site": {"id": "DEMO01"},
            "dicom": {"port": self.dicom_port, "host": "127.0.0.1"},
            "storage": {"data_dir": Path("data"), "min_free_bytes": 100 * 1024**2},
            "assemble": {"stable_seconds": 3.0, "sweep_seconds": 0.5},
            "registry": {"url": f"http://127.0.0.1:{self.registry_port}", "token_file": token_file},
        }))
        self.config = config
        daemon = self._spawn(["-c", str(config), "run"], "daemon.log",
                             {"SITE_CONNECTOR__HTTP__PORT": str(self.http_port)})
        _wait_port(self.dicom_port, daemon)

    def send_study(self) -> int:
        from pydicom import dcmread
        from pynetdicom import AE

        from connector.synthetic import write_demo_study

        files = write_demo_study(self.folder / "study", ct_slices=self.ct_slices)
        ae = AE(ae_title="DEMOPACS")
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title="SITECONN")
        if not assoc.is_established:
            raise RuntimeError("the connector refused the demo association")
        try:
            for path in files:
                status = assoc.send_c_store(path)
                if getattr(status, "Status", None) != 0x0000:
                    raise RuntimeError("the connector did not store a demo instance")
        finally:
            assoc.release()
        return len(files)

    # -- observe -------------------------------------------------------------------------------

    def _get(self, client: httpx.Client, path: str) -> Any:
        r = client.get(f"http://127.0.0.1:{self.registry_port}{path}", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def wait_for_registry(self, sent: int, want_cac: bool) -> DemoResult:
        result = DemoResult(instances_sent=sent, folder=str(self.folder))
        deadline = time.monotonic() + self.timeout
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                studies = self._get(client, "/dicomweb/studies")
                if studies:
                    study = studies[0]
                    result.instances = int(study.get("00201208", {}).get("Value", [0])[0])
                    result.pseudonym = str(study.get("00100020", {}).get("Value", [""])[0])
                manifests = self._get(client, "/api/v1/manifests")
                result.manifest = bool(manifests.get("manifests") if isinstance(manifests, dict) else manifests)
                results = self._get(client, "/api/v1/results")
                rows = results.get("results", []) if isinstance(results, dict) else results
                if rows:
                    row = rows[0]
                    result.cac = {k: row.get(k) for k in ("agatston", "category", "volume_mm3", "lesions", "model")
                                  if k in row}
                done = result.instances >= sent and result.manifest and (result.cac is not None or not want_cac)
                if done:
                    subjects = self._get(client, "/api/v1/subjects")
                    rows = subjects.get("subjects", []) if isinstance(subjects, dict) else subjects
                    result.subject = next((s for s in rows if s.get("pseudonym") == result.pseudonym), {})
                    return result
                time.sleep(0.5)
        raise TimeoutError("the registry did not receive the whole demo study in time; see daemon.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)

    def run(self, *, stay: bool = False, on_ready: Any = None) -> DemoResult:
        """Run the chain; with ``stay`` the registry and daemon keep running until Ctrl-C/SIGTERM,
        after ``on_ready(result)`` has been called, so a person can look at the dashboard."""
        started = time.monotonic()
        try:
            self.start()
            sent = self.send_study()
            result = self.wait_for_registry(sent, want_cac=_cac_enabled(self.config))
            result.dashboard = f"http://127.0.0.1:{self.http_port}/"
            result.seconds = time.monotonic() - started
            if stay:
                result.dashboard_login = self._demo_login()
                if on_ready is not None:
                    on_ready(result)
                _wait_for_interrupt()
        finally:
            self.stop()
        result.seconds = result.seconds or time.monotonic() - started
        return result

    def _demo_login(self) -> dict[str, str]:
        """A throw-away dashboard user for this demo site only."""
        from connector.config import load_config
        from connector.web.users import users_path
        from connector.web.users import UserFile

        password = secrets.token_urlsafe(12)
        UserFile(users_path(load_config(self.config))).add("demo", password, replace=True, role="coordinator")
        return {"user": "demo", "password": password}

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _wait_for_interrupt() -> None:
    import signal
    import threading

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _cac_enabled(config_path: Path) -> bool:
    from connector.config import load_config

    cfg = load_config(config_path)
    cac = getattr(cfg, "cac", None)
    return bool(cac is not None and getattr(cac, "enabled", False))


def summary_text(result: DemoResult, *, kept: bool = False) -> str:
    lines = [
        f"registry received study of {result.pseudonym or '?'}: {result.instances} instances"
        f" ({min(result.instances, result.instances_sent)} of {result.instances_sent} sent"
        f"{', plus the CAC SR and SEG' if result.instances > result.instances_sent else ''})"
        f"{', manifest' if result.manifest else ''}",
        f"subject: {json.dumps(result.subject, sort_keys=True)}",
    ]
    if result.cac:
        lines.append(f"CAC: Agatston {result.cac.get('agatston')} (category {result.cac.get('category')})")
    if result.dashboard_login:
        lines.append(f"dashboard: {result.dashboard} (user {result.dashboard_login['user']}, password "
                     f"{result.dashboard_login['password']}); Ctrl-C stops the demo")
    elif result.dashboard:
        lines.append(f"dashboard: {result.dashboard} (served while the demo runs; use --stay to look at it)")
    lines.append(f"took {result.seconds:.0f} s" + (f"; files kept in {result.folder}" if kept else ""))
    return "\n".join(lines)
