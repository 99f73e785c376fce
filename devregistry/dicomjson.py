"""DICOM JSON (PS3.18 F.2) for the dev registry's STOW-RS responses and QIDO-RS results."""

from __future__ import annotations

from typing import Any


def el(vr: str, *values: Any) -> dict[str, Any]:
    values_list = [v for v in values if v not in (None, "")]
    if vr == "PN":
        values_list = [{"Alphabetic": v} for v in values_list]
    return {"vr": vr, "Value": values_list} if values_list else {"vr": vr}


def stow_response(retrieve_url: str, stored: list[tuple[str, str, str]],
                  failed: list[tuple[str, str, int]]) -> dict[str, Any]:
    """``stored``: (SOP class, SOP instance, retrieve URL); ``failed``: (SOP class, SOP instance, reason)."""
    doc: dict[str, Any] = {"00081190": el("UR", retrieve_url)}
    if stored:
        doc["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": el("UI", cls), "00081155": el("UI", uid), "00081190": el("UR", url)}
            for cls, uid, url in stored]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": el("UI", cls), "00081155": el("UI", uid), "00081197": el("US", reason)}
            for cls, uid, reason in failed]}
    return doc


def study_json(row: dict[str, Any], base: str) -> dict[str, Any]:
    uid = row["study_instance_uid"]
    return {
        "00080020": el("DA", row.get("study_date")),
        "00080030": el("TM", row.get("study_time")),
        "00080050": el("SH", row.get("accession_number")),
        "00080061": el("CS", *sorted(filter(None, (row.get("modalities") or "").split(",")))),
        "00081190": el("UR", f"{base}/studies/{uid}"),
        "00100010": el("PN", row.get("patient_name")),
        "00100020": el("LO", row.get("patient_id")),
        "0020000D": el("UI", uid),
        "00201206": el("IS", row.get("series_count")),
        "00201208": el("IS", row.get("instance_count")),
    }


def series_json(row: dict[str, Any], base: str) -> dict[str, Any]:
    study, series = row["study_instance_uid"], row["series_instance_uid"]
    return {
        "00080060": el("CS", row.get("modality")),
        "0008103E": el("LO", row.get("series_description")),
        "00081190": el("UR", f"{base}/studies/{study}/series/{series}"),
        "0020000D": el("UI", study),
        "0020000E": el("UI", series),
        "00200011": el("IS", row.get("series_number")),
        "00201209": el("IS", row.get("instance_count")),
    }


def instance_json(row: dict[str, Any], base: str) -> dict[str, Any]:
    study, series, sop = row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"]
    return {
        "00080016": el("UI", row.get("sop_class_uid")),
        "00080018": el("UI", sop),
        "00081190": el("UR", f"{base}/studies/{study}/series/{series}/instances/{sop}"),
        "0020000D": el("UI", study),
        "0020000E": el("UI", series),
        "00200013": el("IS", row.get("instance_number")),
    }
