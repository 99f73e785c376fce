"""End to end: every study is delivered, whatever the optional CAC stage does.

storescu -> daemon (CAC on) -> dev registry, with CT series as scanners and PACS write them: type 2
attributes absent or empty, PatientSex "O". Every series must arrive whole, with its SR and SEG (the
phantom's CT holds coronary calcium). Then a CAC model that raises at inference: the images still
arrive, the study shows "delivered, CAC failed: reason" in ``status``, ``study`` and ``/metrics``, and
once a fixed model is installed and the service restarted, the failed study is scored on retry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import onnx
import pydicom
import pytest
from onnx import TensorProto, helper

from connector.infer.manifest import bundled_model_dir
from connector.store.digests import file_sha256
from devregistry import RegistryServer
from connector.store.state import study_key
from connector.synthetic import SyntheticPatient, SyntheticStudy, write_demo_study
from tests.support.waiting import wait_for
from tests.push.test_push_daemon import identifiers, push_settings, storescu, token_file
from tests.support.daemon import ConnectorProcess

pytestmark = pytest.mark.slow

CT_SLICES = 30  # 3 mm slices: 90 mm, over the 80 mm coverage CAC asks for
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Type 2 (or 3) attributes of a CT that PS3.3 allows to be absent or empty, as the issue lists them.
REMOVED = ["PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyTime",
           "SeriesNumber", "Manufacturer", "BodyPartExamined", "PatientAge", "SliceLocation"]
EMPTIED = ["PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName",
           "StudyDate", "StudyTime", "SeriesNumber", "Manufacturer", "SliceThickness"]


def ct_study(folder: Path, n: int, change: str) -> tuple[SyntheticStudy, list[Path]]:
    """A CT-only chest study (coronary calcium present), changed as a scanner or PACS might write it."""
    study = SyntheticStudy(patient=SyntheticPatient(family=f"TYPETWO{chr(65 + n)}", given="ABSENTIA",
                                                    patient_id=f"T2-{n:04d}"))
    files = [p for p in write_demo_study(folder, ct_slices=CT_SLICES, study=study) if p.parent.name == "ct"]
    for path in files:
        ds = pydicom.dcmread(path)
        # first as a scanner writes it: every attribute of the list present and filled
        full = {"StudyID": "4711", "ReferringPhysicianName": "REFERRERIUS^DOC", "SeriesNumber": 2,
                "Manufacturer": "SYNTHETIC SCANNER", "BodyPartExamined": "CHEST", "PatientAge": "077Y",
                "SliceLocation": float(ds.ImagePositionPatient[2]), "StudyTime": "101500"}
        for keyword, value in full.items():
            if keyword not in ds:
                setattr(ds, keyword, value)
        if change == "sex O":
            ds.PatientSex = "O"
        elif change == "empty type 2":
            for keyword in EMPTIED:
                setattr(ds, keyword, None)  # present and empty, as type 2 allows
        else:
            assert change in ds, change
            del ds[change]
        ds.save_as(path, enforce_file_format=True)
    return study, files


def test_every_series_arrives_whole_with_its_sr_and_seg(tmp_path: Path) -> None:
    changes = [*REMOVED, "sex O", "empty type 2"]
    studies = [ct_study(tmp_path / "pacs" / str(n), n, change) for n, change in enumerate(changes)]
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, cac__threads=2)
        with ConnectorProcess(tmp_path / "site", **settings) as daemon:
            storescu(daemon.port, [f for _, files in studies for f in files])
            wait_for(lambda: registry.store.stats()["manifests"] >= len(studies)
                     and json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == len(studies), timeout=600)
            status = json.loads(daemon.cli("status", "--json", check=True).stdout)
        assert status["studies"]["failed"] == 0 and status["failed_optional_stages"] == []
        held = {row["study_instance_uid"]: row for row in registry.store.studies()}
        assert len(held) == len(studies)
        needles = [n for study, _ in studies for n in identifiers(study)] + [b"REFERRERIUS"]
        for uid, row in held.items():
            by_class: dict[str, int] = {}
            for inst in registry.store.instances_of(uid):
                data = registry.store.instance_file(inst).read_bytes()
                assert not [n for n in needles if n in data]
                cls = str(pydicom.dcmread(registry.store.instance_file(inst), stop_before_pixels=True).SOPClassUID)
                by_class[cls] = by_class.get(cls, 0) + 1
            # the whole CT series, plus one SR and one SEG (calcium was scored), for every variant
            assert by_class == {"1.2.840.10008.5.1.4.1.1.2": CT_SLICES, SR_CLASS: 1, SEG_CLASS: 1}, row
        results = registry.store.records("results")
        assert len(results) == len(studies) and all(r["status"] == "ok" and r["agatston"] > 0 for r in results)
    finally:
        registry.stop()


def raising_model(folder: Path) -> Path:
    """A model folder whose manifest checks out but whose graph raises at inference (a bad reshape)."""
    folder.mkdir(parents=True)
    manifest = json.loads((bundled_model_dir() / "manifest.json").read_text())
    x = helper.make_tensor_value_info(manifest["input"]["name"], TensorProto.FLOAT, ["n", 3, "h", "w"])
    outs = [helper.make_tensor_value_info(manifest["outputs"][k]["name"], TensorProto.FLOAT, None)
            for k in ("heart", "calcium")]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 7])
    nodes = [helper.make_node("Reshape", [manifest["input"]["name"], "shape"], ["r"]),
             helper.make_node("Identity", ["r"], [outs[0].name]),
             helper.make_node("Identity", ["r"], [outs[1].name])]
    graph = helper.make_graph(nodes, "raises", [x], outs, initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / manifest["file"])
    manifest["sha256"] = file_sha256(folder / manifest["file"])
    manifest["version"] = "0.0.0-broken"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def metric(port: int, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_a_failing_model_never_holds_the_images_and_a_fixed_one_scores_on_retry(tmp_path: Path) -> None:
    study = SyntheticStudy(patient=SyntheticPatient(family="FAILOVERIA", given="QUENTISHA"))
    files = [p for p in write_demo_study(tmp_path / "pacs", ct_slices=CT_SLICES, study=study)]
    model_dir = raising_model(tmp_path / "model")
    token = token_file(tmp_path / "secrets")
    registry = RegistryServer(tmp_path / "registry", token=token.read_text().strip(), port=0).start()
    key = study_key(study.study_uid)
    try:
        settings = push_settings(registry.url, token, cac__enabled=True, cac__threads=2,
                                 cac__model_dir=str(model_dir))
        daemon = ConnectorProcess(tmp_path / "site", **settings)
        with daemon:
            storescu(daemon.port, files)
            # the images (CT and PET), the subject and the manifest arrive; the study is delivered
            wait_for(lambda: registry.store.stats()["instances"] == len(files)
                     and registry.store.stats()["manifests"] == 1, timeout=240)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=60)
            status = json.loads(daemon.cli("status", "--json", check=True).stdout)
            [failed] = status["failed_optional_stages"]
            assert failed["study"] == key and failed["stage"] == "cac" and failed["state"] == "pushed"
            # ONNX Runtime's own exception type (Fail), and its message: the node that failed
            assert failed["error"] == "Fail" and failed["reason"].startswith("Fail: [ONNXRuntimeError]")
            assert "Reshape node" in failed["reason"]
            assert status["optional_stage_failures"] == {"cac": {"retrying": 1, "given_up": 0}}
            text = daemon.cli("status", check=True).stdout
            assert f"study {key} delivered, CAC failed: Fail: [ONNXRuntimeError]" in text
            view = json.loads(daemon.cli("study", key, "--json", check=True).stdout)
            assert view["summary"].startswith("delivered, CAC failed: Fail: [ONNXRuntimeError]")
            assert metric(daemon.http_port, "site_connector_optional_stage_failed_studies", stage="cac",
                          outcome="retrying") == 1
            log = daemon.log_path.read_text()
            assert '"event": "step_failed"' in log and '"reason": "Fail: [ONNXRuntimeError]' in log
            assert study.study_uid not in log and study.patient.patient_id not in log
        assert registry.store.stats()["results"] == 0  # nothing half-made was queued
        # The site installs a fixed model and restarts: the failed study is scored on retry.
        for name in ("model.onnx", "manifest.json"):
            shutil.copyfile(bundled_model_dir() / name, model_dir / name)
        with daemon:
            wait_for(lambda: registry.store.stats()["instances"] == len(files) + 2
                     and registry.store.stats()["results"] == 1, timeout=240)
            wait_for(lambda: json.loads(daemon.cli("status", "--json", check=True).stdout)["studies"]
                     .get("pushed") == 1, timeout=60)
            status = json.loads(daemon.cli("status", "--json", check=True).stdout)
            assert status["failed_optional_stages"] == [] and status["optional_stage_failures"] == {}
            view = json.loads(daemon.cli("study", key, "--json", check=True).stdout)
            assert view["summary"] == "delivered" and view["cac"][0]["status"] == "ok"
        [result] = registry.store.records("results")
        assert result["agatston"] > 0
        classes = sorted(str(pydicom.dcmread(registry.store.instance_file(i), stop_before_pixels=True).SOPClassUID)
                         for row in registry.store.studies() for i in registry.store.instances_of(
                             row["study_instance_uid"]))
        assert classes.count(SR_CLASS) == 1 and classes.count(SEG_CLASS) == 1
        [manifest] = registry.store.manifests()  # posted again, now listing the SR and SEG too
        assert manifest["posts"] == 2 and manifest["manifest"]["instance_count"] == len(files) + 2
    finally:
        registry.stop()
