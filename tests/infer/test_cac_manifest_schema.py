"""The model contract's JSON Schema (models/manifest.schema.json): itself a valid schema, shipped,
every bundled manifest validates against it, the schema and the runtime's parser refuse the same
broken manifests, and no manifest names an absolute path (the v2 manifest named the training
machine's folders; editing the manifest leaves the model hash the runtime checks unchanged)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.infer.errors import ModelError
from connector.infer.manifest import _parse, load_verified_model
from connector.store.digests import file_sha256

jsonschema = pytest.importorskip("jsonschema")  # the test extra installs it

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "models" / "manifest.schema.json"
MANIFESTS = sorted((ROOT / "models").glob("*/manifest.json"))
# /abs/olute or C:\ or ~/ at the start of a word (a relative "models/x" or "v2-s7" is fine)
ABSOLUTE = re.compile(r"(?:^|[\s=\"'(])(?:/[A-Za-z0-9_.-]+/|[A-Za-z]:[\\/]|~/)")


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_there_are_bundled_manifests_and_the_schema_is_shipped() -> None:
    assert {p.parent.name for p in MANIFESTS} >= {"cac-synthetic-v1", "cac-synthetic-v2"}
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert "models/manifest.schema.json" in data_files["share/site-connector/models"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.parent.name)
def test_every_bundled_manifest_validates_and_loads(path: Path) -> None:
    data = json.loads(path.read_text())
    errors = sorted(validator().iter_errors(data), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    manifest, blob = load_verified_model(path.parent)  # the hash still matches the model bytes
    assert manifest.sha256 == file_sha256(path.parent / manifest.file) and blob


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.parent.name)
def test_no_manifest_holds_an_absolute_path(path: Path) -> None:
    found = [s for s in strings(json.loads(path.read_text())) if ABSOLUTE.search(s)]
    assert not found, found


def test_the_path_check_catches_what_it_is_for() -> None:
    assert ABSOLUTE.search("python -m training.ensemble --out x /work/scratch/exp/m-s7")
    assert ABSOLUTE.search("C:\\models\\x") and ABSOLUTE.search("--out ~/runs")
    assert not ABSOLUTE.search("python -m training.ensemble --out models/cac-synthetic-v2 v2-s7 v2-s8")
    assert not ABSOLUTE.search("clip((hu - lo) / (hi - lo), 0, 1)")


BROKEN = [
    ("no sha256", lambda d: d.pop("sha256")),
    ("short sha256", lambda d: d.update(sha256="abc")),
    ("no validated flag", lambda d: d.pop("validated_for_clinical_use")),
    ("no intended use", lambda d: d.pop("intended_use")),
    ("schema 2", lambda d: d.update(schema=2)),
    ("even slices", lambda d: d["input"].update(slices_per_sample=2)),
    ("no input name", lambda d: d["input"].pop("name")),
    ("window of one", lambda d: d["input"].update(hu_window=[0.0])),
    ("no coronary class", lambda d: d["outputs"]["calcium"].update(classes=["none", "bone"])),
    ("no heart output", lambda d: d["outputs"].pop("heart")),
    ("zero spacing", lambda d: d["input"].update(pixel_spacing_mm=0)),
]


@pytest.mark.parametrize(("what", "breaks"), BROKEN, ids=[b[0] for b in BROKEN])
def test_schema_and_runtime_refuse_the_same_broken_manifest(what: str, breaks) -> None:
    data = copy.deepcopy(json.loads((ROOT / "models" / "cac-synthetic-v2" / "manifest.json").read_text()))
    breaks(data)
    assert list(validator().iter_errors(data)), f"schema accepts: {what}"
    with pytest.raises((ValueError, KeyError, TypeError, ModelError)):
        _parse(data)


def test_schema_refuses_a_model_file_with_a_folder() -> None:
    data = json.loads((ROOT / "models" / "cac-synthetic-v2" / "manifest.json").read_text())
    for bad in ("/opt/models/model.onnx", "../model.onnx", "sub/model.onnx"):
        assert list(validator().iter_errors({**data, "file": bad})), bad


def test_training_scripts_record_command_lines_without_absolute_paths() -> None:
    from training.provenance import portable_argv

    argv = ["--out", "/srv/build/models/cac-x", "--cache", "/tmp/data.npz", "--seed", "8", "relative/dir"]
    assert portable_argv(argv) == ["--out", "cac-x", "--cache", "data.npz", "--seed", "8", "relative/dir"]
