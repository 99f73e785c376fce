"""All 621 rows of PS3.15 Table E.1-1: the shipped rule files match the table row for row, and the
engine does to each attribute what the basic profile and each option say.

The mapping from table codes to actions is written here again, independently of the generator, as
the specification the files are checked against (docs/rules.md states the same mapping).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, generate_uid

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.values import shift_da, shift_dt
from tests.deid.factory import ORG, Planted, encode

RULES = Path(__file__).resolve().parents[2] / "rules"
TABLE = json.loads((RULES / "standards" / "ps3.15-table-e1-1.json").read_text())
OPTIONS = {
    "rtnSafePrivOpt": "ps3.15-retain-safe-private.yaml",
    "rtnUIDsOpt": "ps3.15-retain-uids.yaml",
    "rtnDevIdOpt": "ps3.15-retain-device-identity.yaml",
    "rtnInstIdOpt": "ps3.15-retain-institution-identity.yaml",
    "rtnPatCharsOpt": "ps3.15-retain-patient-characteristics.yaml",
    "rtnLongFullDatesOpt": "ps3.15-retain-longitudinal-full-dates.yaml",
    "rtnLongModifDatesOpt": "ps3.15-retain-longitudinal-modified-dates.yaml",
    "cleanDescOpt": "ps3.15-clean-descriptors.yaml",
    "cleanStructContOpt": "ps3.15-clean-structured-content.yaml",
    "cleanGraphOpt": "ps3.15-clean-graphics.yaml",
}
SPEC_BASIC = {"X": "remove", "Z": "empty", "D": "dummy", "U": "remap_uid", "X/Z": "empty", "X/D": "dummy",
              "Z/D": "dummy", "X/Z/D": "dummy", "X/Z/U*": "remap_uid"}
TEXT = "T 5551234567"  # identifier-shaped (a long digit run) but not one of the patient's identifiers
OFFSET_SECRET = bytes(range(32))


def row_vr(row: dict) -> str:
    rid = row["id"]
    if rid.startswith("gggg"):
        return "LO"
    if rid == "50xxxxxx":
        return "OB"
    if rid == "60xx3000":
        return "OW"
    if rid == "60xx4000":
        return "LT"
    return get_entry(int(rid, 16))[0].split(" or ")[0]


def row_tag(row: dict) -> int:
    rid = row["id"]
    return {"50xxxxxx": 0x50003000, "60xx3000": 0x60003000, "60xx4000": 0x60004000,
            "ggggeeee-where-gggg-is-odd": 0x00111001}.get(rid) or int(rid, 16)


def expected_basic(row: dict) -> str:
    action = SPEC_BASIC[row["basicProfile"]]
    return "empty" if action == "dummy" and row_vr(row) == "SQ" else action


_CODE_ACTION = {"D": "dummy", "Z": "empty", "X": "remove"}
_PREFERENCE = {1: "DZX", 2: "ZDX", 3: "XZD"}  # PS3.15: D for type 1, Z for type 2, X for type 3


def expected_typed(row: dict, kind: int) -> str:
    """The basic profile's action for an attribute of PS3.3 type ``kind`` (1, 2, 3) in the object's
    IOD: a compound code offers D, Z or X by type; a reference code (U) keeps its items; a sequence
    cannot hold a dummy item, and an empty type 3 sequence is invalid, so it goes; a type 1 sequence
    keeps its items, cleaned; type 1 is never emptied or removed, type 2 never removed."""
    code, sq = row["basicProfile"], row_vr(row) == "SQ"
    parts = code.replace("*", "").split("/")
    action = expected_basic(row)
    if "/" in code and "U" not in parts:
        action = next(_CODE_ACTION[c] for c in _PREFERENCE[kind] if c in parts)
    if sq and action == "dummy":
        action = "empty"
    if kind == 1 and action in ("remove", "empty"):
        return "clean" if sq else "dummy"
    if kind == 2 and action == "remove":
        return "empty"
    if kind == 3 and sq and action == "empty":
        return "remove"
    return action


def expected_option(row: dict, column: str) -> str:
    code = row[column]
    if code == "K":
        return "keep"
    assert code == "C"
    if column == "rtnLongModifDatesOpt" and row_vr(row) in ("DA", "DT", "TM"):
        return "shift_date"
    return "clean"


def load_rules(name: str) -> list[dict]:
    return yaml.safe_load((RULES / name).read_text())["rules"]


def tag_text(row: dict) -> str:
    if row["id"].startswith("gggg"):
        return "private: all"
    return row["tag"].replace("X", "x")


# ---------------------------------------------------------------------------------------------
# The files against the table


def test_table_has_621_rows() -> None:
    assert len(TABLE) == 621
    assert len({r["id"] for r in TABLE}) == 621


def test_basic_file_matches_table_row_for_row() -> None:
    rules = load_rules("ps3.15-basic.yaml")
    assert len(rules) == 621
    by_row = {r["row"]: r for r in rules}
    assert len(by_row) == 621
    for row in TABLE:
        rule = by_row[row["id"]]
        selector = "private: all" if "private" in rule else rule["tag"]
        assert selector == tag_text(row), row["id"]
        assert rule["table"] == row["basicProfile"], row["id"]
        assert rule["action"] == expected_basic(row), (row["id"], row["basicProfile"])


@pytest.mark.parametrize("column", sorted(OPTIONS))
def test_option_file_matches_table_row_for_row(column: str) -> None:
    data = yaml.safe_load((RULES / OPTIONS[column]).read_text())
    assert "ps3.15-basic.yaml" in data["include"]
    rules = data["rules"]
    selected = [r for r in TABLE if column in r]
    assert len(rules) == len(selected) > 0
    by_row = {r["row"]: r for r in rules}
    for row in selected:
        rule = by_row[row["id"]]
        assert rule["table"] == row[column]
        assert rule["action"] == expected_option(row, column), (column, row["id"])


def test_generator_reproduces_the_shipped_files() -> None:
    script = RULES / "tools" / "generate_ps315_rules.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shipped_table_copy_carries_its_licence_notice() -> None:
    notice = (RULES / "standards" / "NOTICE").read_text()
    assert "Innolitics" in notice and "MIT" in notice and "NEMA" in notice


# ---------------------------------------------------------------------------------------------
# The engine against the table: one object holding every row, under the basic profile and each option


def value_for(row: dict, vr: str) -> object:
    p = Planted()
    special = {"00100010": p.name, "00101001": p.name, "00101005": p.name, "00100020": p.patient_id,
               "00101000": p.other_id, "00100021": p.issuer, "00080050": p.accession, "00100030": p.birth_date,
               "00080080": p.institution, "00080081": "1 QUOKKA ROAD", "00200010": "STUDY42",
               "00081040": "CARDIOLOGY DEPT"}
    if row["id"] in special:
        return special[row["id"]]
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "C1"
        item.CodingSchemeDesignator = "99TEST"
        item.CodeMeaning = "M " + TEXT
        return Sequence([item])
    return {
        "DA": "20200102", "DT": "20200102083015.123456+0100", "TM": "083015.123456", "UI": generate_uid(ORG),
        "AS": "095Y", "DS": "12.5", "IS": "42", "US": 7, "SS": -7, "PN": "PLATYPUSKY^BART", "UR": "http://example.org/x",
        "OB": b"\x01\x02", "OW": b"\x01\x02", "UN": b"\x01\x02",
    }.get(vr, TEXT)


def table_object() -> tuple[bytes, dict[str, object]]:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    originals: dict[str, object] = {}
    for row in TABLE:
        vr = row_vr(row)
        value = value_for(row, vr)
        tag = row_tag(row)
        if row["id"] == "00020003" or tag >> 16 == 0:
            continue  # file meta (checked on the output's meta) and command elements (never in a stored object)
        if row["id"].startswith("gggg"):
            ds.private_block(0x0011, "ACME ROW TEST", create=True).add_new(0x01, "LO", TEXT)
        else:
            ds.add(DataElement(tag, vr, value))
        originals[row["id"]] = value
    ds.SOPInstanceUID = originals["00080018"]  # type: ignore[assignment]
    return encode(ds), originals


def check(row: dict, action: str, vr: str, original: object, out: Dataset, offset: int) -> str | None:
    """None when the output shows ``action`` applied to the row's attribute, else what is wrong."""
    if row["id"] == "00020003":
        v = str(out.file_meta.MediaStorageSOPInstanceUID)
        ok = v.startswith("2.25.") if action in ("remap_uid", "dummy") else True
        return None if ok else "meta UID not remapped"
    tag = row_tag(row)
    present = tag in out
    elem = out[tag] if present else None
    value = elem.value if elem is not None else None
    if action == "remove" or (action == "clean" and vr in ("OB", "OW", "UN")):
        return None if not present else "still present"
    if not present:
        return f"missing (expected {action})"
    if vr == "SQ":
        if action == "empty":
            return None if len(value) == 0 else "sequence not emptied"
        if len(value) != 1 or value[0].CodeValue != "C1":
            return "sequence items lost"
        if action == "clean" and "5551234567" in str(value[0].get("CodeMeaning", "")):
            return "sequence content not cleaned"
        return None
    if action == "empty":
        return None if value in (None, "", b"") else f"not empty: {value!r}"
    if action == "keep":
        return None if _same(value, original) else "value changed"
    if action == "dummy":
        if vr == "UI":
            return None if str(value).startswith("2.25.") else "UID not remapped"
        return None if value not in (None, "", b"") and not _same(value, original) else "no dummy value"
    if action == "remap_uid":
        return None if str(value).startswith("2.25.") and str(value) != original else "UID not remapped"
    if action in ("shift_date", "clean") and vr in ("DA", "DT", "TM"):
        want = {"DA": lambda v: shift_da(v, offset), "DT": lambda v: shift_dt(v, offset), "TM": lambda v: v}[vr](
            str(original))
        return None if str(value) == want else f"date not shifted: {value!r}"
    if action == "clean":
        if vr == "UI":
            return None if str(value).startswith("2.25.") else "UID not remapped"
        if vr in ("PN", "UR"):
            return None if value in (None, "") else "not emptied"
        if vr in ("DS", "IS", "US", "SS"):
            return None if _same(value, original) else "number changed"
        if vr == "AS":
            return None if str(value) == "090Y" else f"age not capped: {value!r}"
        return None if "5551234567" not in str(value) and str(value).startswith("T") else f"not cleaned: {value!r}"
    return f"unexpected action {action}"


def _same(a: object, b: object) -> bool:
    return str(a) == str(b) if not isinstance(b, (bytes, Sequence)) else a == b


PROFILES = [("basic", None)] + [(c, c) for c in sorted(OPTIONS)]


@pytest.mark.parametrize("label,column", PROFILES, ids=[p[0] for p in PROFILES])
def test_engine_applies_every_row(label: str, column: str | None) -> None:
    data, originals = table_object()
    provider = EphemeralIdentityProvider(secret=OFFSET_SECRET)
    rules = [RULES / (OPTIONS[column] if column else "ps3.15-basic.yaml")]
    engine = DeidEngine.from_rules(rules, provider, fsync=False)
    result = engine.process_bytes(data)
    graphics_kept = column == "cleanGraphOpt"
    if graphics_kept:  # the option keeps overlays, where text can be drawn: refused (issue 12) ...
        assert (result.status, result.reason) == ("quarantine", "overlay-retained")
        without_overlays = dcmread(io.BytesIO(data))
        for key in [k for k in without_overlays.keys() if 0x6000 <= k.group <= 0x601E]:
            del without_overlays[key]
        buffer = io.BytesIO()
        without_overlays.save_as(buffer)
        result = engine.process_bytes(buffer.getvalue())  # ... and the option's other rows still apply
    assert result.status == "ok", (result.reason, result.details)
    out = dcmread(io.BytesIO(result.data))
    offset = provider.subject_for(_identity()).date_offset_days
    problems = []
    ct_types = engine.rules.profile.attribute_types[CTImageStorage]  # the object is a CT Image (PS3.3 A.3)
    for row in TABLE:
        if column and column in row:
            action = expected_option(row, column)
        elif row["tag"].startswith(("(0000,", "(0002,")) or "X" in row["tag"].upper() or row["id"].startswith("g"):
            action = expected_basic(row)  # command, meta, range and private rows: no IOD type
        else:
            action = expected_typed(row, ct_types.get(row_tag(row), 3))
        if row["tag"].startswith("(0000,"):
            if engine.rules.public(row_tag(row)).action != action:  # pydicom cannot even write these
                problems.append((row["id"], "command element decision"))
            continue
        if graphics_kept and row["tag"].upper().startswith("(60XX"):
            continue
        if row["id"] == "ggggeeee-where-gggg-is-odd":
            gone = 0x00111001 not in out and 0x00110010 not in out
            if not gone:
                problems.append((row["id"], "private element kept"))
            continue
        problem = check(row, action, row_vr(row), originals.get(row["id"]), out, offset)
        if problem:
            problems.append((row["tag"], row["name"], action, problem))
    assert problems == []
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    if column:
        option_code = yaml.safe_load((RULES / OPTIONS[column]).read_text())["codes"][0]["value"]
        assert option_code in codes


def _identity():
    from connector.deid.provider import PatientIdentity

    p = Planted()
    return PatientIdentity(patient_id=p.patient_id, issuer=p.issuer, name=p.name, birth_date=p.birth_date, sex="")
