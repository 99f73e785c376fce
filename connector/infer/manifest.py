"""Model manifests: what a model is, what it expects, and proof that the file is the one described.

Why: the model is a replaceable component (a site will swap the synthetic demo model for a validated
one), so the connector never trusts a bare ``.onnx`` file. Every model folder holds ``manifest.json``
next to the model; the SHA-256 of the model bytes must match the manifest or the runner refuses to
start. The input and output specs are the model contract (docs/cac.md, models/manifest.schema.json):
the input layout (2d slices, 2.5d slice stacks, 3d patches), grid, HU windows as channels, and the
output kind (per-class probabilities with named coronary / non-coronary classes, or a coronary-calcium
probability plus a heart probability), stride and thresholds. The runtime follows them, so a registry's
own model of another shape runs without code changes. v1/v2 manifests (layout ``NCHW``, one
``hu_window``, no ``kind``) read as 2.5d / classes, as before. A broken manifest is refused with a
message naming the field.
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
class HuWindow:
    """One input channel: HU clipped to [lo, hi], scaled linearly onto [to_lo, to_hi]."""

    lo: float
    hi: float
    to_lo: float = 0.0
    to_hi: float = 1.0


@dataclass(frozen=True)
class InputSpec:
    name: str
    slices_per_sample: int  # 2.5d: adjacent slices per sample, centred on the scored slice; 2d: 1; 3d: patch depth
    hu_window: tuple[float, float]  # the first window's [lo, hi] (v1/v2 have one)
    in_plane_size: int  # model grid is in_plane_size x in_plane_size pixels
    pixel_spacing_mm: float  # ... at this spacing, centred on the image centre
    size_multiple: int | None = None  # set: the model also accepts any H, W multiple of this (crop to the body)
    layout: str = "2.5d"  # "2d" (N, W, H, W), "2.5d" (N, S*W, H, W), "3d" (N, W, D, H, W); W = windows
    windows: tuple[HuWindow, ...] = ()  # one input channel each (2.5d: per slice, slice-major)
    patch_overlap: int = 0  # 3d: planes shared by consecutive patches (each plane's output is taken from
    # the patch where it lies most central)
    slice_spacing_mm: float | None = None  # 3d: planes resampled to this spacing along z; None: the series' own

    @property
    def channels(self) -> int:
        """Input channels per sample (3d: per plane)."""
        per_slice = len(self.windows)
        return per_slice * self.slices_per_sample if self.layout == "2.5d" else per_slice


@dataclass(frozen=True)
class OutputSpec:
    heart: str | None  # output name: (N, 1, [D,] h, w) heart probability; None (kind "classes" only): no heart output
    calcium: str  # output name: (N, C, [D,] h, w) probabilities (C = len(calcium_classes), or 1 for kind probability+heart)
    calcium_classes: tuple[str, ...]
    coronary_class: int  # index of the first coronary class in calcium_classes
    stride: int  # model grid pixels per output pixel
    threshold: float  # a cell is marked coronary (or other calcium) when its calcium probability reaches this
    kind: str = "classes"  # "classes" or "probability+heart"
    coronary_classes: tuple[int, ...] = ()  # kind classes: indices summed into the coronary probability
    noncoronary_classes: tuple[int, ...] = ()  # ... and into the non-coronary calcium probability
    heart_threshold: float | None = None  # None: the same as threshold
    labels: bool = False  # kind classes: the calcium output is a label map (N, 1, [D,] h, w) of class indices

    @property
    def heart_cut(self) -> float:
        return self.threshold if self.heart_threshold is None else self.heart_threshold


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


LAYOUTS = ("2d", "2.5d", "3d")
KINDS = ("classes", "probability+heart")
ENCODINGS = ("probabilities", "labels")  # kind classes: C probability channels, or one channel of class indices
LEGACY_LAYOUT = "NCHW"  # v1/v2 manifests: 2.5d with slices_per_sample slices
NO_CALCIUM = ("none", "background")  # class names that are not calcium when a manifest does not say


def _field(section: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be an object")
    if key not in section:
        raise ValueError(f"{where}.{key} is required")
    return section[key]


def _window(value: Any, where: str) -> HuWindow:
    """A window: ``[lo, hi]`` (scaled to [0, 1]) or ``{"hu": [lo, hi], "to": [a, b]}``."""
    hu, to = (value.get("hu"), value.get("to", [0.0, 1.0])) if isinstance(value, dict) else (value, [0.0, 1.0])
    if not (isinstance(hu, list) and len(hu) == 2 and isinstance(to, list) and len(to) == 2):
        raise ValueError(f"{where} must be [lo, hi] or {{\"hu\": [lo, hi], \"to\": [a, b]}}")
    lo, hi = (float(v) for v in hu)
    a, b = (float(v) for v in to)
    if not hi > lo:
        raise ValueError(f"{where} must be [lo, hi] with hi > lo")
    if a == b:
        raise ValueError(f"{where}.to must be two different values")
    return HuWindow(lo, hi, a, b)


def _parse_input(inp: dict[str, Any]) -> InputSpec:
    layout = str(inp.get("layout", LEGACY_LAYOUT))
    if layout == LEGACY_LAYOUT:
        layout = "2.5d"
    elif layout not in LAYOUTS:
        raise ValueError(f"input.layout must be one of {', '.join(LAYOUTS)} (or the legacy {LEGACY_LAYOUT}); got {layout!r}")
    if "windows" in inp:
        raw = inp["windows"]
        if not isinstance(raw, list) or not raw:
            raise ValueError("input.windows must be a non-empty list of windows")
        windows = tuple(_window(w, f"input.windows[{i}]") for i, w in enumerate(raw))
    else:
        windows = (_window(_field(inp, "hu_window", "input"), "input.hu_window"),)
    overlap, slice_spacing = 0, None
    if layout == "2.5d":
        slices = int(_field(inp, "slices_per_sample", "input"))
        if slices < 1 or slices % 2 == 0:
            raise ValueError("input.slices_per_sample must be odd and positive")
    elif layout == "2d":
        slices = 1
    else:
        patch = _field(inp, "patch", "input")
        slices = int(_field(patch, "depth", "input.patch"))
        overlap = int(patch.get("overlap", 0))
        if slices < 1 or not 0 <= overlap < slices or overlap % 2:
            raise ValueError("input.patch: depth >= 1 and an even overlap, 0 <= overlap < depth")
        if inp.get("slice_spacing_mm") is not None:
            slice_spacing = float(inp["slice_spacing_mm"])
            if slice_spacing <= 0:
                raise ValueError("input.slice_spacing_mm must be positive")
    spec = InputSpec(
        name=str(_field(inp, "name", "input")),
        slices_per_sample=slices,
        hu_window=(windows[0].lo, windows[0].hi),
        in_plane_size=int(_field(inp, "in_plane_size", "input")),
        pixel_spacing_mm=float(_field(inp, "pixel_spacing_mm", "input")),
        size_multiple=int(inp["size_multiple"]) if inp.get("size_multiple") else None,
        layout=layout,
        windows=windows,
        patch_overlap=overlap,
        slice_spacing_mm=slice_spacing,
    )
    if spec.in_plane_size < 16 or spec.pixel_spacing_mm <= 0:
        raise ValueError("input.in_plane_size / pixel_spacing_mm out of range")
    if spec.size_multiple is not None and spec.in_plane_size % spec.size_multiple:
        raise ValueError("input.size_multiple must divide input.in_plane_size")
    return spec


def _class_indices(names: Any, classes: tuple[str, ...], where: str) -> tuple[int, ...]:
    if not isinstance(names, list) or not names:
        raise ValueError(f"{where} must be a non-empty list of class names")
    missing = [n for n in names if n not in classes]
    if missing:
        raise ValueError(f"{where} names {missing}, not in outputs.calcium.classes {list(classes)}")
    return tuple(classes.index(n) for n in names)


def _threshold(value: Any, where: str) -> float:
    t = float(value)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{where} must be in (0, 1]")
    return t


def _parse_output(out: dict[str, Any], spec_in: InputSpec) -> OutputSpec:
    legacy = "kind" not in out
    kind = str(out.get("kind", "classes"))
    if kind not in KINDS:
        raise ValueError(f"outputs.kind must be one of {', '.join(KINDS)}; got {kind!r}")
    calcium = _field(out, "calcium", "outputs")
    heart_section = _field(out, "heart", "outputs") if legacy or kind == "probability+heart" else out.get("heart")
    heart = str(_field(heart_section, "name", "outputs.heart")) if heart_section is not None else None
    thresholds = out.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise ValueError("outputs.thresholds must be an object {calcium, heart}")
    threshold = _threshold(thresholds.get("calcium", out.get("threshold", 0.5)), "outputs.thresholds.calcium")
    heart_t = _threshold(thresholds["heart"], "outputs.thresholds.heart") if "heart" in thresholds else None
    if kind == "classes":
        classes = tuple(str(c) for c in _field(calcium, "classes", "outputs.calcium"))
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError("outputs.calcium.classes must be at least two distinct names")
        if legacy or "coronary" not in calcium:
            if "coronary" not in classes:
                raise ValueError("outputs.calcium.classes must include 'coronary' "
                                 "(or name the coronary classes in outputs.calcium.coronary)")
            coronary = (classes.index("coronary"),)
        else:
            coronary = _class_indices(calcium["coronary"], classes, "outputs.calcium.coronary")
        if not legacy and "noncoronary" in calcium:
            noncoronary = _class_indices(calcium["noncoronary"], classes, "outputs.calcium.noncoronary")
        else:
            noncoronary = tuple(i for i, c in enumerate(classes) if i not in coronary and c not in NO_CALCIUM)
        if set(coronary) & set(noncoronary):
            raise ValueError("outputs.calcium: a class cannot be both coronary and non-coronary")
        encoding = str(calcium.get("encoding", "probabilities"))
        if encoding not in ENCODINGS:
            raise ValueError(f"outputs.calcium.encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
    else:
        classes, coronary, noncoronary, encoding = ("calcium",), (0,), (), "probabilities"
    spec_out = OutputSpec(
        heart=heart,
        calcium=str(_field(calcium, "name", "outputs.calcium")),
        calcium_classes=classes,
        coronary_class=coronary[0],
        stride=int(_field(out, "stride", "outputs")),
        threshold=threshold,
        kind=kind,
        coronary_classes=coronary,
        noncoronary_classes=noncoronary,
        heart_threshold=heart_t,
        labels=encoding == "labels",
    )
    if spec_out.stride < 1 or spec_in.in_plane_size % spec_out.stride:
        raise ValueError("outputs.stride must divide input.in_plane_size")
    if spec_in.size_multiple is not None and spec_in.size_multiple % spec_out.stride:
        raise ValueError("outputs.stride must divide input.size_multiple")
    return spec_out


def _parse(data: dict[str, Any]) -> ModelManifest:
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema must be {SCHEMA_VERSION}")
    sha = str(data["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("sha256 must be 64 hex digits")
    spec_in = _parse_input(_field(data, "input", "manifest"))
    spec_out = _parse_output(_field(data, "outputs", "manifest"), spec_in)
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
