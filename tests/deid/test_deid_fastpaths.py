"""The speed paths change nothing: encoded-sequence rewriting, the lean writer and the
undefined-length pre-pass give the same objects as pydicom's own path."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider
from connector.deid.rawseq import define_sequence_lengths
from connector.deid.reading import Unreadable, read_dataset
from connector.deid.walker import ObjectContext
from connector.deid.writer import encode_file
from connector.vocabulary import load_vocabulary
from tests.deid.conftest import SECRET
from tests.deid.factory import (
    Planted,
    add_private,
    base_dataset,
    encode,
    enhanced_ct,
    leaks,
    nest_phi,
    undefined_lengths,
)


def engines(rules: list[Path] | None = None) -> tuple[DeidEngine, DeidEngine]:
    provider = EphemeralIdentityProvider(secret=SECRET)
    from connector.deid.profile import load_profile

    profile = load_profile(rules)
    return (DeidEngine(profile, provider, fsync=False),
            DeidEngine(profile, provider, fsync=False, raw_sequences=False))


def values(ds: Dataset) -> list[tuple[str, str]]:
    """Every element at every depth as (tag path, value text): encoding details (lengths) ignored."""
    out = []

    def walk(item: Dataset, prefix: str) -> None:
        for elem in item:
            path = f"{prefix}{elem.tag}"
            if elem.VR == "SQ":
                out.append((path, f"{len(elem.value)} items"))
                for i, child in enumerate(elem.value):
                    walk(child, f"{path}[{i}]")
            else:
                out.append((path, repr(elem.value)))

    walk(ds.file_meta, "meta")
    walk(ds, "")
    return out


def corpus() -> list[tuple[str, bytes]]:
    items = []
    for depth in (1, 2, 3):
        ds = base_dataset()
        add_private(ds)
        nest_phi(ds, depth)
        items.append((f"nested{depth}", encode(ds)))
        ds = base_dataset()
        add_private(ds)
        nest_phi(ds, depth)
        items.append((f"nested{depth}-implicit", encode(ds, ImplicitVRLittleEndian)))
    for undefined in (False, True):
        ds = enhanced_ct(3, 12)
        if undefined:
            undefined_lengths(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        items.append((f"enhanced-undefined={undefined}", buf.getvalue()))
    return items


@pytest.mark.parametrize("name,data", corpus(), ids=[n for n, _ in corpus()])
def test_encoded_sequence_path_equals_pydicom_path(name: str, data: bytes) -> None:
    fast, slow = engines()
    a, b = fast.process_bytes(data), slow.process_bytes(data)
    assert a.status == b.status == "ok", (a.reason, b.reason)
    assert values(dcmread(io.BytesIO(a.data))) == values(dcmread(io.BytesIO(b.data)))
    assert leaks(a.data) == []


def test_pydicom_corpus_gives_the_same_objects_on_both_paths() -> None:
    fast, slow = engines()
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files():
            if not Path(path).is_file():
                continue
            data = Path(path).read_bytes()
            a, b = fast.process_bytes(data), slow.process_bytes(data)
            assert (a.status, a.reason) == (b.status, b.reason), path
            if a.status == "ok":
                assert values(dcmread(io.BytesIO(a.data))) == values(dcmread(io.BytesIO(b.data))), path
                compared += 1
    assert compared >= 90


def test_enhanced_ct_nested_values_are_de_identified() -> None:
    fast, _slow = engines()
    ds = enhanced_ct(1, 6)
    undefined_lengths(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = fast.process_bytes(buf.getvalue())
    out = dcmread(io.BytesIO(result.data))
    frame = out.PerFrameFunctionalGroupsSequence[5]
    content = frame.FrameContentSequence[0]
    assert content.FrameAcquisitionDateTime[:8] == out.StudyDate  # shifted with the study
    assert content.FrameAcquisitionDateTime[8:] == "083005.500000"
    source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == fast.uid(ds.PerFrameFunctionalGroupsSequence[5]
                                                        .DerivationImageSequence[0].SourceImageSequence[0]
                                                        .ReferencedSOPInstanceUID)
    assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert out.PatientName != ds.PatientName and "BENCHMARK GENERAL" not in str(out.get("InstitutionName"))


def test_lean_writer_writes_what_dcmwrite_writes() -> None:
    fast, _slow = engines()
    ctx = ObjectContext("SITE01-TEST0000", -30, "SITE01", "iso8859", load_vocabulary(), [])
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files():
            if not Path(path).is_file():
                continue
            try:
                ds = read_dataset(Path(path).read_bytes())
            except Unreadable:
                continue
            expected = io.BytesIO()
            try:
                fast._walker.walk(ds, ctx)
                fast._markers.apply(ds, [])
                ds.save_as(expected, enforce_file_format=True)
            except Exception:  # noqa: BLE001, S112 - objects the engine quarantines are not the writer's business
                continue
            assert encode_file(ds) == expected.getvalue(), path
            compared += 1
    assert compared >= 90


def test_undefined_length_pre_pass_keeps_the_meaning() -> None:
    ds = enhanced_ct(2, 4)
    undefined_lengths(ds)
    nest_phi(ds, 3)
    ds.DerivationCodeSequence[0].is_undefined_length_sequence_item = True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    original = buf.getvalue()
    rewritten = define_sequence_lengths(original)
    assert rewritten != original
    assert values(dcmread(io.BytesIO(rewritten))) == values(dcmread(io.BytesIO(original)))
    assert define_sequence_lengths(rewritten) is rewritten  # nothing left to do at the top level
    truncated = original[:-40]
    assert define_sequence_lengths(truncated) is truncated  # unusual input is left to pydicom


def test_planted_values_never_survive_either_path() -> None:
    fast, slow = engines()
    ds = base_dataset()
    add_private(ds)
    nest_phi(ds, 3)
    undefined_lengths(ds)
    data = encode(ds)
    assert b"\xff\xff\xff\xff" in data
    for engine in (fast, slow):
        result = engine.process_bytes(data)
        assert result.status == "ok" and leaks(result.data, Planted()) == []
