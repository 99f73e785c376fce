"""The rule file format: parsing, line-level errors, includes, and the documented precedence."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread

from connector.cli.deid_cmd import explain
from connector.deid.compiler import CompiledRules
from connector.deid.engine import DeidEngine
from connector.deid.profile import load_profile, shipped_rules_dir
from connector.deid.rulefile import RuleFileError, parse_rule_file, parse_tag
from tests.deid.factory import base_dataset, encode


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tag_forms() -> None:
    assert parse_tag("(0010,0010)").tag == parse_tag("0010,0010").tag == parse_tag("00100010").tag == 0x00100010
    assert parse_tag("PatientName").tag == 0x00100010
    r = parse_tag("(60xx,3000)")
    assert r.kind == "range" and 0x60023000 & r.mask == r.value and 0x60023001 & r.mask != r.value
    assert parse_tag("(50XX,XXXX)").specificity < r.specificity < parse_tag("(0010,0010)").specificity
    with pytest.raises(ValueError):
        parse_tag("NotAKeyword")


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", (
        "format: 1\n"
        "rules:\n"
        "  - keyword: PatientNme\n"        # line 3
        "    action: remove\n"
        "  - {tag: '(0010,0020)', action: obliterate}\n"  # line 5
        "  - {vr: DA, action: replace}\n"  # line 6
        "  - {tag: '(0019,1000)', action: keep}\n"  # line 7
        "filters:\n"
        "  - {id: f, when: {Modalty: [US]}, action: skip, reason: x}\n"  # line 9
    ))
    with pytest.raises(RuleFileError) as exc:
        parse_rule_file(path)
    lines = {(p.where.file, p.where.line) for p in exc.value.problems}
    assert lines == {("bad.yaml", 3), ("bad.yaml", 5), ("bad.yaml", 6), ("bad.yaml", 7), ("bad.yaml", 9)}
    messages = " ".join(p.message for p in exc.value.problems)
    assert "PatientNme" in messages and "obliterate" in messages and "Modalty" in messages


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "format: 1\nrules:\n  - {tag: '(0010,0010)', action: keep\n")
    with pytest.raises(RuleFileError) as exc:
        parse_rule_file(path)
    assert exc.value.problems[0].where.line >= 3 and "YAML" in exc.value.problems[0].message


def test_scalars_keep_their_written_form(tmp_path: Path) -> None:
    # YAML 1.1 would read NO as false and 00100010 as a number; rule files mean the text.
    path = write(tmp_path, "forms.yaml", (
        "format: 1\nrules:\n  - {tag: 00100010, action: replace, value: NO}\n"
        "filters:\n  - {id: f, when: {BurnedInAnnotation: [NO]}, action: accept}\n"))
    rf = parse_rule_file(path)
    assert rf.rules[0].selector.tag == 0x00100010 and rf.rules[0].value == "NO"
    assert rf.filters[0].when == (("BurnedInAnnotation", ("NO",)),)


def test_duplicate_selectors_in_one_file_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.yaml", "format: 1\nrules:\n  - {keyword: PatientName, action: keep}\n"
                                      "  - {tag: '(0010,0010)', action: remove}\n")
    with pytest.raises(RuleFileError) as exc:
        parse_rule_file(path)
    assert exc.value.problems[0].where.line == 4


def test_include_cycle_and_missing_include(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "format: 1\ninclude: [b.yaml]\n")
    write(tmp_path, "b.yaml", "format: 1\ninclude: [a.yaml, missing.yaml]\n")
    with pytest.raises(RuleFileError) as exc:
        load_profile([tmp_path / "a.yaml"])
    text = " ".join(str(p) for p in exc.value.problems)
    assert "cycle" in text and "missing.yaml" in text


def test_precedence(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", (
        "format: 1\nrules:\n"
        "  - {vr: LO, action: empty}\n"
        "  - {tag: '(0008,0070)', action: remove}\n"
        "  - {tag: '(60xx,xxxx)', action: remove}\n"
        "  - {tag: '(60xx,3000)', action: keep}\n"
        "  - {private: all, action: remove}\n"
        "  - {private: {group: '0019', creator: ACME}, action: keep}\n"
        "  - {private: {group: '0019', creator: ACME, element: '23'}, action: empty}\n"))
    site = write(tmp_path, "site.yaml", (
        "format: 1\ninclude: [base.yaml]\nrules:\n"
        "  - {keyword: Manufacturer, action: keep}\n"     # same level as base's tag rule: later wins
        "  - {vr: SH, action: remove}\n"))
    compiled = CompiledRules(load_profile([site]))
    assert compiled.public(0x00080070).action == "keep"  # exact, later file
    assert compiled.public(0x00081090).action == "empty"  # ManufacturerModelName LO: only the VR rule
    assert compiled.public(0x60003000).action == "keep"  # range with fewer wildcards beats the wider one
    assert compiled.public(0x60004000).action == "remove"
    assert compiled.public(0x00081010).action == "remove"  # StationName SH: VR rule from site.yaml
    assert compiled.public(0x00180015).action == "keep"  # BodyPartExamined CS: unlisted default
    assert compiled.public(0x00231234).basis == "unknown" and compiled.public(0x00231234).action == "remove"
    assert compiled.private(0x00191023, "ACME").action == "empty"  # creator + element
    assert compiled.private(0x00191024, "acme  ").action == "keep"  # creator block (case, padding ignored)
    assert compiled.private(0x00191024, "OTHER").action == "remove"  # private: all
    assert compiled.private(0x00211024, "ACME").action == "remove"  # block rules are per group


def test_later_root_files_override_earlier(tmp_path: Path) -> None:
    one = write(tmp_path, "one.yaml", "format: 1\nrules:\n  - {keyword: StationName, action: remove}\n")
    two = write(tmp_path, "two.yaml", "format: 1\nrules:\n  - {keyword: StationName, action: keep}\n")
    assert CompiledRules(load_profile([one, two])).public(0x00081010).action == "keep"
    assert CompiledRules(load_profile([two, one])).public(0x00081010).action == "remove"


def test_shared_include_is_loaded_once_at_its_first_place() -> None:
    rules = shipped_rules_dir()
    profile = load_profile([rules / "registry-default.yaml"])
    names = [f.path.name for f in profile.files]
    assert names.count("ps3.15-basic.yaml") == 1 and names[0] == "ps3.15-basic.yaml"
    assert names[-1] == "registry-default.yaml"
    compiled = CompiledRules(profile)
    # basic says "empty" for Study Date; the modified-dates option, loaded later, says shift_date.
    assert compiled.public(0x00080020).action == "shift_date"


def test_filters_first_match_and_override_by_id(tmp_path: Path, provider) -> None:
    site = write(tmp_path, "site.yaml", (
        "format: 1\ninclude: [registry-default.yaml]\nfilters:\n"
        "  - {id: secondary-capture, when: {SOPClassUID: ['1.2.840.10008.5.1.4.1.1.7']}, action: accept}\n"
        "  - {id: skip-localizers, when: {ImageType: [LOCALIZER]}, action: skip, reason: localizer}\n"))
    engine = DeidEngine.from_rules([site], provider, fsync=False)
    sc = base_dataset(modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert engine.process_bytes(encode(sc)).status == "ok"  # the site accepted what the default quarantines
    scout = base_dataset()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    result = engine.process_bytes(encode(scout))
    assert (result.status, result.reason) == ("skip", "localizer")


def test_replace_with_template_and_unknown_field(tmp_path: Path, provider) -> None:
    good = write(tmp_path, "t.yaml", "format: 1\ninclude: [registry-default.yaml]\nrules:\n"
                                    "  - {keyword: InstitutionName, action: replace, template: 'Registry site {site}'}\n")
    engine = DeidEngine.from_rules([good], provider, site_id="SITE07", fsync=False)
    out = dcmread(io.BytesIO(engine.process_bytes(encode(base_dataset())).data))
    assert out.InstitutionName == "Registry site SITE07"
    bad = write(tmp_path, "u.yaml", "format: 1\nrules:\n  - {keyword: InstitutionName, action: replace, "
                                    "template: '{patient_name}'}\n")
    with pytest.raises(RuleFileError, match="patient_name"):
        parse_rule_file(bad)


def test_explain_names_the_deciding_rule_and_what_it_overrides() -> None:
    info = explain(load_profile(), "PatientName")
    assert info["action"] == "pseudonym"
    assert info["rule"]["file"] == "registry-default.yaml" and info["rule"]["line"] > 0
    assert [o["file"] for o in info["overrides"]] == ["ps3.15-basic.yaml"]
    assert info["overrides"][0]["table"] == "Z"
    unlisted = explain(load_profile(), "(0018,0060)")  # KVP
    assert unlisted["action"] == "keep" and unlisted["basis"] == "unlisted"
    private = explain(load_profile([shipped_rules_dir() / "ps3.15-retain-safe-private.yaml"]),
                      "(0019,xx23)", creator="GEMS_ACQU_01")
    assert private["action"] == "keep" and private["rule"]["file"] == "safe-private-attributes.yaml"
