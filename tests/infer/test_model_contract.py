"""The model contract (issue 29, item 2): models of other shapes than v1/v2 load from their manifest
and score through the same runtime, and a manifest that breaks the contract is refused, naming the field.

The two extra bundled models (training/contract_models.py): ``cac-synthetic-2d-v1`` (single slice at
0.7 mm, three HU windows, a coronary-calcium probability plus a heart probability) and
``cac-synthetic-3d-v1`` (3D patches of 8 planes at 3 mm, two windows, background / coronary /
noncoronary classes, no heart output).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
import tomllib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connector.infer.agatston import agatston, category_for
from connector.infer.errors import ModelError
from connector.infer.manifest import BUNDLED_MODEL_DIR, _parse, load_manifest
from connector.infer.runner import CacRunner
from connector.infer.study import score_study
from connector.synthetic.phantom_series import write_phantom
from connector.synthetic.phantoms import make_phantom
from training.evaluate import held_out_phantom, score_phantom, truth_score

jsonschema = pytest.importorskip("jsonschema")

MODELS = BUNDLED_MODEL_DIR.parent
MODEL_2D = MODELS / "cac-synthetic-2d-v1"
MODEL_3D = MODELS / "cac-synthetic-3d-v1"
SCHEMA = json.loads((MODELS / "manifest.schema.json").read_text())


@pytest.fixture(scope="module")
def runners() -> dict[str, CacRunner]:
    return {"2d": CacRunner.load(MODEL_2D, threads=2), "3d": CacRunner.load(MODEL_3D, threads=2)}


def test_the_extra_models_declare_other_shapes_than_v1_v2() -> None:
    m2, m3, v2 = load_manifest(MODEL_2D), load_manifest(MODEL_3D), load_manifest(BUNDLED_MODEL_DIR)
    assert (v2.input.layout, v2.output.kind, v2.input.slices_per_sample, len(v2.input.windows)) == ("2.5d", "classes", 3, 1)
    assert (m2.input.layout, m2.output.kind, m2.input.pixel_spacing_mm, m2.input.channels) == ("2d", "probability+heart", 0.7, 3)
    assert m2.output.heart == "heart" and m2.input.windows[2].to_lo == -1.0
    assert (m3.input.layout, m3.output.kind, m3.input.slices_per_sample, m3.input.slice_spacing_mm) == ("3d", "classes", 8, 3.0)
    assert m3.output.heart is None
    assert [m3.output.calcium_classes[i] for i in m3.output.coronary_classes] == ["coronary"]
    assert [m3.output.calcium_classes[i] for i in m3.output.noncoronary_classes] == ["noncoronary"]
    for folder in (MODEL_2D, MODEL_3D):
        manifest = load_manifest(folder)
        assert manifest.validated_for_clinical_use is False
        assert (folder / manifest.file).stat().st_size < 100_000  # tiny
        assert (folder / "README.md").is_file()
        assert manifest.raw["training"]["command"].startswith("python -m training.contract_models")
    data_files = tomllib.loads((MODELS.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    for folder in (MODEL_2D, MODEL_3D):  # installed with the package, like the default
        shipped = data_files[f"share/site-connector/models/{folder.name}"]
        assert sorted(Path(p).name for p in shipped) == ["README.md", "manifest.json", "model.onnx"]


@pytest.mark.parametrize("key", ["2d", "3d"])
def test_extra_model_scores_a_dicom_series_end_to_end(runners: dict[str, CacRunner], key: str, tmp_path: Path) -> None:
    seed, ph = held_out_phantom(501)  # 3 mm slices, 0.977 mm pixels: both models resample (2d in-plane, 3d none)
    [result] = score_study(write_phantom(ph, tmp_path), runners[key])
    assert result.ok and result.agatston is not None
    assert result.model["name"] == load_manifest(MODEL_2D if key == "2d" else MODEL_3D).name
    score = result.agatston.score
    truth = truth_score(ph)
    assert math.isfinite(score) and truth > 400
    assert result.agatston.category == category_for(truth) == ">400"
    assert 0.4 * truth <= score <= 1.6 * truth  # found the plaques, not everything dense


@pytest.mark.parametrize("key", ["2d", "3d"])
def test_extra_model_categories_on_held_out_phantoms(runners: dict[str, CacRunner], key: str) -> None:
    """Held-out phantoms of every category (indices 500-505 also used in docs/cac.md's table)."""
    scores = [score_phantom(runners[key], ph, seed) for seed, ph in (held_out_phantom(500 + i) for i in range(6))]
    assert all(math.isfinite(s.predicted) for s in scores)
    right = sum(s.truth_category == s.predicted_category for s in scores)
    assert right >= 4, [(round(s.truth, 1), round(s.predicted, 1)) for s in scores]
    assert sum(s.bone_aorta_scored for s in scores) < 0.25 * sum(s.truth for s in scores)


def test_without_coronary_calcium(runners: dict[str, CacRunner]) -> None:
    """Phantoms with no coronary plaque but bone, aortic wall and (910001) valve calcium: the 2d model
    scores none; the 3d model leaves all but a trace of it (it scores 290 and 309 here: aortic-wall
    and valve calcium in the heart region; docs/cac.md reports it)."""
    for seed in (910_101, 910_001):
        ph = make_phantom(seed, plaque_count=0, noncoronary_load=1.0, increment=3.0)
        hu, spacing = ph.hu.astype(np.float32), (ph.pixel_spacing, ph.pixel_spacing)
        everything = agatston(hu, ph.noncoronary, spacing, ph.increment).score
        assert everything > 100_000
        assert runners["2d"].score_hu(hu, spacing, ph.increment).agatston.score == 0.0
        scored_3d = runners["3d"].score_hu(hu, spacing, ph.increment)
        assert scored_3d.agatston.score < 0.001 * everything


def test_3d_patches_stitch_to_the_whole_volume(runners: dict[str, CacRunner]) -> None:
    """Patches of 8 planes overlapping by 2 give each plane what one patch over the whole series
    gives it (the model's z context is 3 planes), at a batch size that splits the patches."""
    runner = runners["3d"]
    whole = CacRunner(_no_crop(runner.manifest), runner.session, dataclasses.replace(runner.config, batch_size=16))
    ph = make_phantom(123, plaque_count=6, increment=3.0)
    hu = ph.hu.astype(np.float32)
    seg = whole.segment(hu, (ph.pixel_spacing, ph.pixel_spacing), 3.0)
    x = np.stack(whole._channels(hu), axis=0)[None]  # identity grid: 512 at 0.977 mm
    [p] = runner.session.run([runner.manifest.output.calcium], {"image": x})
    assert len(hu) > 8 * 2  # several patches, several batches
    np.testing.assert_allclose(seg.coronary, p[0, 1], atol=1e-5)
    np.testing.assert_allclose(seg.other, p[0, 2], atol=1e-5)
    assert (seg.heart == 1.0).all()  # no heart output: no gating by the model


def test_3d_resamples_along_z(runners: dict[str, CacRunner]) -> None:
    """A 1.5 mm series is read at 3 mm (every other slice); each slice gets its nearest plane's marks."""
    runner = runners["3d"]
    ph = make_phantom(123, plaque_count=6, increment=3.0)
    coarse = ph.hu.astype(np.float32)
    fine = np.repeat(coarse, 2, axis=0)[:-1]  # slices 1.5 mm apart: 2k is coarse slice k
    assert list(runner.plane_map(len(fine), 1.5)) == list(range(0, len(fine), 2))
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    marks_coarse = runner.mark_grid(coarse, spacing, 3.0).marks
    marks_fine = runner.mark_grid(fine, spacing, 1.5).marks
    assert len(marks_fine) == len(fine)
    nearest = np.clip(np.rint(np.arange(len(fine)) * 0.5).astype(int), 0, len(coarse) - 1)
    assert np.array_equal(marks_fine, marks_coarse[nearest])
    assert (marks_coarse > 0).any()


def test_2d_reads_one_slice_with_its_windows_as_channels(runners: dict[str, CacRunner]) -> None:
    """The 2d model's marks on a slice do not depend on its neighbours, and its input carries the
    three windows (the third scaled onto [-1, 1])."""
    runner = runners["2d"]
    ph = make_phantom(123, plaque_count=6, increment=3.0)
    hu = ph.hu.astype(np.float32)
    spacing = (ph.pixel_spacing, ph.pixel_spacing)
    k = len(hu) // 2
    alone = runner.segment(hu[k : k + 1], spacing)
    among = runner.segment(hu, spacing)
    np.testing.assert_array_equal(alone.coronary[0], among.coronary[k])
    channels = runner._channels(np.array([[-1000.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(np.stack(channels)[:, 0], [[0, 0, 1], [0, 0.4, 1], [-1, 0, 1]], atol=1e-6)


def test_25d_with_two_windows_feeds_slice_major_channels(tmp_path: Path) -> None:
    """A 2.5d model with two windows gets (N, slices * windows, H, W): slice 0's windows, then slice 1's..."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, "H", "W"])
    nodes = [  # calcium: the input channels as they came (6 'classes'); heart: ones
        helper.make_node("MaxPool", ["x"], ["calcium"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Slice", ["calcium", "s0", "s1", "ax"], ["c0"]),
        helper.make_node("Mul", ["c0", "zero"], ["z0"]),
        helper.make_node("Add", ["z0", "one"], ["heart"]),
    ]
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s0", 0), ("s1", 1), ("ax", 1))]
    inits += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("calcium", "heart")]
    model = helper.make_model(helper.make_graph(nodes, "probe", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    blob = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(blob)
    manifest = _manifest_template()
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    manifest["input"] = {"name": "x", "layout": "2.5d", "slices_per_sample": 3, "windows": [[0, 100], [0, 1000]],
                         "in_plane_size": 16, "pixel_spacing_mm": 1.0}
    manifest["outputs"] = {"kind": "classes", "stride": 4, "heart": {"name": "heart"},
                           "calcium": {"name": "calcium", "classes": ["s0w0", "s0w1", "s1w0", "s1w1", "s2w0", "s2w1"],
                                       "coronary": ["s1w1"], "noncoronary": ["s0w0"]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest))
    runner = CacRunner.load(tmp_path)
    hu = np.stack([np.full((16, 16), v, np.float32) for v in (50.0, 500.0, 1000.0)])  # three slices
    seg = runner.segment(hu, (1.0, 1.0))
    # coronary = channel 'slice 1 (the centre), window 1': 500 HU in [0, 1000] -> 0.5 on the middle slice
    assert seg.coronary[1].max() == pytest.approx(0.5)
    # non-coronary = 'slice 0, window 0': the previous slice (50 HU) in [0, 100] -> 0.5
    assert seg.other[1].max() == pytest.approx(0.5)
    assert seg.coronary[0].max() == pytest.approx(0.05)  # first slice's centre: 50 HU in [0, 1000]


def _no_crop(manifest: Any) -> Any:
    return dataclasses.replace(manifest, input=dataclasses.replace(manifest.input, size_multiple=None))


def _manifest_template() -> dict[str, Any]:
    data = json.loads((MODEL_2D / "manifest.json").read_text())
    return copy.deepcopy(data)


# --- malformed manifests: refused by the runtime with the field named, and by the schema -----------

# (what, the field the runtime's error names, the change, whether JSON Schema can see it: it cannot
# compare two numbers, so an upside-down window is the runtime's catch alone)
BROKEN: list[tuple[str, str, Any, bool]] = [
    ("unknown layout", "input.layout", lambda d: d["input"].update(layout="4d"), True),
    ("unknown kind", "outputs.kind", lambda d: d["outputs"].update(kind="mask"), True),
    ("no windows", "input.hu_window", lambda d: d["input"].pop("windows"), True),
    ("empty windows", "input.windows", lambda d: d["input"].update(windows=[]), True),
    ("window upside down", "input.windows[1]", lambda d: d["input"]["windows"][1].update(hu=[300, -200]), False),
    ("window of three", "input.windows[0]", lambda d: d["input"]["windows"][0].update(hu=[0, 500, 1000]), True),
    ("no heart for probability+heart", "outputs.heart", lambda d: d["outputs"].pop("heart"), True),
    ("no input name", "input.name", lambda d: d["input"].pop("name"), True),
    ("threshold above 1", "outputs.thresholds.calcium", lambda d: d["outputs"]["thresholds"].update(calcium=1.5), True),
    ("3d without patch", "input.patch", lambda d: d["input"].update(layout="3d"), True),
    ("2.5d without slices", "input.slices_per_sample", lambda d: d["input"].update(layout="2.5d"), True),
]


@pytest.mark.parametrize(("what", "field", "breaks", "schema_sees"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_contract_is_refused_naming_the_field(
    what: str, field: str, breaks: Any, schema_sees: bool, tmp_path: Path
) -> None:
    data = _manifest_template()
    breaks(data)
    assert bool(list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))) == schema_sees, what
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        load_manifest(tmp_path)
    assert err.value.code == "manifest_invalid"
    assert field in str(err.value), str(err.value)


def test_classes_naming_an_unknown_coronary_class_is_refused() -> None:
    data = json.loads((MODEL_3D / "manifest.json").read_text())
    data["outputs"]["calcium"]["coronary"] = ["LAD"]
    with pytest.raises(ValueError, match="outputs.calcium.coronary"):
        _parse(data)
    data["outputs"]["calcium"]["coronary"] = ["coronary"]
    data["outputs"]["calcium"]["noncoronary"] = ["coronary"]
    with pytest.raises(ValueError, match="both coronary and non-coronary"):
        _parse(data)


def test_model_whose_outputs_differ_from_its_manifest_is_refused(tmp_path: Path) -> None:
    shutil.copytree(MODEL_3D, tmp_path / "m")
    data = json.loads((tmp_path / "m" / "manifest.json").read_text())
    data["outputs"]["heart"] = {"name": "heart"}  # the 3d model has none
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        CacRunner.load(tmp_path / "m")
    assert err.value.code == "model_io_mismatch"


def test_model_whose_input_rank_differs_from_its_layout_is_refused(tmp_path: Path) -> None:
    shutil.copytree(MODEL_3D, tmp_path / "m")
    data = json.loads((tmp_path / "m" / "manifest.json").read_text())
    data["input"]["layout"] = "2d"  # the 3d model's input is (N, C, D, H, W)
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        CacRunner.load(tmp_path / "m")
    assert err.value.code == "model_io_mismatch" and "5 dimensions" in str(err.value)


def test_classes_as_a_label_map(tmp_path: Path) -> None:
    """``calcium.encoding: labels``: one channel of class indices (an ArgMax export) is read as the
    named classes; a probe model labels 0..344 HU background, 345..689 coronary, 690+ noncoronary."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from connector.infer.agatston import CORONARY, OTHER

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    nodes = [
        helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Mul", ["m", "k"], ["mk"]),
        helper.make_node("Cast", ["mk"], ["labels"], to=TensorProto.INT64),  # truncates: 0, 1 or 2
    ]
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [2.9])]
    out = helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 1, "h", "w"])
    model = helper.make_model(helper.make_graph(nodes, "labels", [x], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    blob = model.SerializeToString()
    (tmp_path / "model.onnx").write_bytes(blob)
    manifest = _manifest_template()
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    manifest["input"] = {"name": "x", "layout": "2d", "windows": [[0, 1000]], "in_plane_size": 16, "pixel_spacing_mm": 1.0}
    manifest["outputs"] = {"kind": "classes", "stride": 4,
                           "calcium": {"name": "labels", "encoding": "labels",
                                       "classes": ["background", "coronary", "noncoronary"]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest))
    runner = CacRunner.load(tmp_path)
    hu = np.full((2, 16, 16), 100.0, np.float32)
    hu[:, 4:12, 0:8] = 500.0  # coronary by the probe's labels
    hu[:, 4:12, 8:16] = 800.0  # noncoronary
    marks = runner.mark_grid(hu, (1.0, 1.0)).marks
    assert (marks[:, 1:3, 0:2] == CORONARY).all() and (marks[:, 1:3, 2:4] == OTHER).all()
    assert (marks[:, 0] == 0).all() and (marks[:, 3] == 0).all()
    bad = copy.deepcopy(manifest)
    bad["outputs"]["calcium"]["encoding"] = "argmax"
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(bad))
    with pytest.raises(ValueError, match="outputs.calcium.encoding"):
        _parse(bad)
