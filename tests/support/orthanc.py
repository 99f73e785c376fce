"""A real Orthanc server on loopback for tests: as the hospital PACS, or as a DICOMweb peer."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_port
from tests.support.tools import orthanc_binary, orthanc_dicomweb_plugin


class OrthancServer:
    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                 dicomweb: bool = False, env: dict[str, str] | None = None,
                 extra_config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb = dicomweb
        self.env = env or {}
        self.extra_config = extra_config or {}  # any further Orthanc option, e.g. {"LimitFindResults": 2}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> OrthancServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugins = []
        if self.dicomweb:
            plugin = orthanc_dicomweb_plugin()
            if plugin is None:
                raise FileNotFoundError("Orthanc DICOMweb plugin not found; install 'orthanc-dicomweb'")
            plugins.append(plugin)
        config = {
            "Name": "test-orthanc",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 2,
            "ConcurrentJobs": 2,
            "HttpsVerifyPeers": False,
            **self.extra_config,
        }
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "wb")
        self.proc = subprocess.Popen([orthanc_binary(), str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **self.env))
        wait_port(self.http_port)
        wait_port(self.dicom_port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        try:
            return json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return payload

    def upload(self, path: Path) -> dict[str, Any]:
        return self.request("POST", "/instances", path.read_bytes())

    def wait_job(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.request("GET", f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc job {job_id} still running")
