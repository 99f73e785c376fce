"""Model manifests: what a model is, what it expects, and proof that the file is the one described.

Why: the model is a replaceable component (a site will swap the synthetic demo model for a validated
one), so the connector never trusts a bare ``.onnx`` file. Every model folder holds ``manifest.json``
next to the model; the SHA-256 of the model bytes must match the manifest or the runner refuses to
start. The input and output specs tell the runtime how to prepare slices and read the outputs, so a
model trained with other settings (window, spacing, slice count) runs without code changes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.infer.errors import ModelError, ModelIntegrityError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
BUNDLED_MODEL_NAME = "cac-synthetic-v2"


def bundled_model_dir() -> Path:
    """The shipped model: the source tree's ``models/``, else ``<prefix>/share/site-connector/models``
    where ``pip install .`` puts it (pyproject data-files)."""
    in_tree = Path(__file__).resolve().parents[2] / "models" / BUNDLED_MODEL_NAME
    if in_tree.is_dir():
        return in_tree
    return Path(sys.prefix) / "share" / "site-connector" / "models" / BUNDLED_MODEL_NAME


BUNDLED_MODEL_DIR = bundled_model_dir()


@dataclass(frozen=True)
class InputSpec:
    name: str
    slices_per_sample: int  # adjacent slices per sample, centred on the scored slice
    hu_window: tuple[float, float]  # clip to [lo, hi], then scale to [0, 1]
    in_plane_size: int  # model grid is in_plane_size x in_plane_size pixels
    pixel_spacing_mm: float  # ... at this spacing, centred on the image centre
    size_multiple: int | None = None  # set: the model also accepts any H, W multiple of this (crop to the body)


@dataclass(frozen=True)
class OutputSpec:
    heart: str  # output name: (N, 1, h, w) heart probability
    calcium: str  # output name: (N, C, h, w) class probabilities
    calcium_classes: tuple[str, ...]
    coronary_class: int  # index of "coronary" in calcium_classes
    stride: int  # model grid pixels per output pixel
    threshold: float  # a cell is marked coronary (or other calcium) when its probability reaches this


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    sha256: str
    file: str
    input: InputSpec
    output: OutputSpec
    license: str
    intended_use: str
    validated_for_clinical_use: bool
    raw: dict[str, Any]

    @property
    def macs_per_slice(self) -> int | None:
        value = self.raw.get("compute", {}).get("macs_per_slice")
        return int(value) if value is not None else None

    def summary(self) -> dict[str, Any]:
        """The model identity reported with every result."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "validated_for_clinical_use": self.validated_for_clinical_use,
        }



def load_manifest(model_dir: Path) -> ModelManifest:
    """Parse and validate ``model_dir/manifest.json`` (does not read the model)."""
    path = Path(model_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("manifest_missing", f"no {MANIFEST_NAME} in the model folder {model_dir}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError("manifest_unreadable", f"{path}: {exc}") from None
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError("manifest_invalid", f"{path}: {type(exc).__name__}: {exc}") from None


def _parse(data: dict[str, Any]) -> ModelManifest:
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema must be {SCHEMA_VERSION}")
    sha = str(data["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("sha256 must be 64 hex digits")
    inp = data["input"]
    lo, hi = (float(v) for v in inp["hu_window"])
    if not hi > lo:
        raise ValueError("input.hu_window must be [lo, hi] with hi > lo")
    spec_in = InputSpec(
        name=str(inp["name"]),
        slices_per_sample=int(inp["slices_per_sample"]),
        hu_window=(lo, hi),
        in_plane_size=int(inp["in_plane_size"]),
        pixel_spacing_mm=float(inp["pixel_spacing_mm"]),
        size_multiple=int(inp["size_multiple"]) if inp.get("size_multiple") else None,
    )
    if spec_in.slices_per_sample < 1 or spec_in.slices_per_sample % 2 == 0:
        raise ValueError("input.slices_per_sample must be odd and positive")
    if spec_in.in_plane_size < 16 or spec_in.pixel_spacing_mm <= 0:
        raise ValueError("input.in_plane_size / pixel_spacing_mm out of range")
    if spec_in.size_multiple is not None and spec_in.in_plane_size % spec_in.size_multiple:
        raise ValueError("input.size_multiple must divide input.in_plane_size")
    out = data["outputs"]
    classes = tuple(str(c) for c in out["calcium"]["classes"])
    spec_out = OutputSpec(
        heart=str(out["heart"]["name"]),
        calcium=str(out["calcium"]["name"]),
        calcium_classes=classes,
        coronary_class=classes.index("coronary"),
        stride=int(out["stride"]),
        threshold=float(out.get("threshold", 0.5)),
    )
    if spec_out.stride < 1 or spec_in.in_plane_size % spec_out.stride:
        raise ValueError("outputs.stride must divide input.in_plane_size")
    if spec_in.size_multiple is not None and spec_in.size_multiple % spec_out.stride:
        raise ValueError("outputs.stride must divide input.size_multiple")
    return ModelManifest(
        name=str(data["name"]),
        version=str(data["version"]),
        sha256=sha,
        file=str(data.get("file", "model.onnx")),
        input=spec_in,
        output=spec_out,
        license=str(data["license"]),
        intended_use=str(data["intended_use"]),
        validated_for_clinical_use=bool(data["validated_for_clinical_use"]),
        raw=data,
    )


def load_verified_model(model_dir: Path | None) -> tuple[ModelManifest, bytes]:
    """The manifest and the model bytes, after checking the bytes' SHA-256 against the manifest.

    The bytes returned are the ones hashed, and the session is built from them, so the file cannot
    change between check and use. Raises :class:`ModelIntegrityError` on a mismatch.
    """
    model_dir = Path(model_dir) if model_dir is not None else BUNDLED_MODEL_DIR
    manifest = load_manifest(model_dir)
    model_path = model_dir / manifest.file
    if model_path.name != manifest.file or not model_path.is_file():
        raise ModelError("model_missing", f"model file {manifest.file!r} not found in {model_dir}")
    blob = model_path.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != manifest.sha256:
        raise ModelIntegrityError(
            "model_hash_mismatch",
            f"{model_path} has SHA-256 {actual[:16]}..., manifest says {manifest.sha256[:16]}...; refusing to run",
        )
    return manifest, blob
