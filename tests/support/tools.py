"""Locating the real external peers the tests drive (dcmtk, Orthanc)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

# pynetdicom installs Python apps also called storescu/storescp; the tests mean dcmtk's.
_DCMTK_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin")


@functools.cache
def dcmtk(tool: str) -> str:
    """Absolute path of a dcmtk tool (verified by its --version banner)."""
    candidates = [str(Path(d) / tool) for d in _DCMTK_DIRS]
    found = shutil.which(tool)
    if found:
        candidates.append(found)
    for path in candidates:
        if not Path(path).is_file():
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True)
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    raise FileNotFoundError(f"dcmtk's {tool} not found; install Debian package 'dcmtk'")


@functools.cache
def orthanc_binary() -> str:
    for path in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", shutil.which("Orthanc") or ""):
        if path and Path(path).is_file():
            return path
    raise FileNotFoundError("Orthanc not found; install Debian package 'orthanc'")


def orthanc_dicomweb_plugin() -> str | None:
    for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc"):
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None
