"""``site-connector deid`` (offline de-identification) and ``site-connector rules check|explain``.

``deid`` uses the configured rules and the site's linkage table, so a file de-identified offline
gets the same pseudonym, date offset and UIDs as it would in the daemon. Every file ends up either
de-identified, quarantined with a reason code, or skipped by a filter; junk never stops the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from connector.cli import exitcodes, vocabulary_cmd
from connector.cli.common import (
    CommandError,
    add_config_option,
    config_from_args,
    print_json,
)
from connector.deid.compiler import CompiledRules, dictionary_entry
from connector import phi_guard
from connector.deid.engine import DeidEngine
from connector.deid.profile import Profile, load_profile
from connector.deid.provider import EphemeralIdentityProvider, IdentityProvider
from connector.deid.rulefile import RuleFileError, normalise_creator, parse_tag
from connector.deid.rule_sources import rule_paths, vocabulary_files
from connector.deid.study import (
    QUARANTINE_STAGE,
    BurnedInTextCheck,
    PrivacyReport,
    StudyRecorder,
    ocr_details,
    quarantine_result,
)
from connector.phi_guard import burned_in_text, study_name_tokens
from connector.store.durable import write_file_durably
from connector.store.quarantine import quarantine
from connector.store.layout import SiteLayout
from connector.vocabulary import VocabularyError, load_vocabulary

ACTION_TEXT = {
    "remove": "the element is removed",
    "empty": "the element is kept with an empty value (sequences: no items)",
    "dummy": "the value is replaced by a dummy of the same VR (UIDs are remapped; sequences emptied)",
    "keep": "the value is kept as is (sequence items still go through the rules)",
    "clean": "dates shifted, UIDs remapped, free text kept only in known words (allow-list), names emptied, "
             "binary removed",
    "remap_uid": "each UID becomes 2.25.<HMAC of the site secret and the UID> (sequences: items processed)",
    "shift_date": "DA/DT shifted by the patient's whole-day offset; TM unchanged",
    "pseudonym": "the value becomes the patient's pseudonym from the linkage table",
    "replace": "the value is replaced by the rule's value or template",
    "cap_age": "ages above the rule's max_years become (max_years+1)Y, e.g. 090Y",
}
PRECEDENCE = ("exact tag/keyword > tag range (fewer wildcards first) > VR > defaults; private: creator+element > "
              "creator block > 'private: all' > remove; at the same level the later-loaded rule wins")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deid", help="de-identify a folder tree offline with the configured rules",
        description="De-identify every file under IN into OUT/<study>/<series>/<instance>.dcm with the configured "
        "rules, the site's pseudonyms and date offsets, and the PHI guard. Files that cannot be de-identified "
        "safely are quarantined with a reason. Exit 0 when every file was de-identified, quarantined or skipped.")
    add_config_option(p)
    p.add_argument("input", metavar="IN", type=Path, help="a file or a folder (searched recursively)")
    p.add_argument("output", metavar="OUT", type=Path, help="folder for the de-identified files")
    p.add_argument("--rules", metavar="FILE", action="append", type=Path,
                   help="rule file (repeatable, later overrides earlier); default: [deid] rules from the config")
    p.add_argument("--quarantine", metavar="DIR", type=Path,
                   help="quarantine folder (default: <data_dir>/quarantine, the daemon's)")
    p.add_argument("--ephemeral", action="store_true",
                   help="dry run with throw-away pseudonyms and secret instead of the site's linkage table")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_deid)

    r = sub.add_parser("rules", help="check rule files, explain which rule applies to a tag, the free-text vocabulary",
                       description="Validate de-identification rule files and explain decisions.")
    rsub = r.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rsub.required = True
    c = rsub.add_parser("check", help="validate rule files (with their includes); errors as FILE:LINE: message",
                        description="Validate rule files and their includes. Exit 0 when all are valid, 1 if not.")
    c.add_argument("files", metavar="FILE", nargs="+", type=Path)
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_check)
    e = rsub.add_parser("explain", help="say which rule applies to a tag and why",
                        description="Show the action the profile takes on an attribute, the rule that decides it "
                        "(file and line) and the rules it overrides.")
    add_config_option(e)
    e.add_argument("tag", metavar="TAG", help="keyword (PatientName) or tag ((0010,0010), 0010,0010, 00100010)")
    e.add_argument("--creator", metavar="NAME", help="private creator, for a private tag such as (0019,1023)")
    e.add_argument("--rules", metavar="FILE", action="append", type=Path,
                   help="rule file (repeatable); default: [deid] rules from the config")
    e.add_argument("--sop-class", metavar="UID",
                   help="the decision for a top-level attribute of an object of this SOP class (the IOD's "
                        "attribute types choose PS3.15 D, Z or X; see docs/rules.md, Valid output)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_explain)
    vocabulary_cmd.register(rsub)


# ---------------------------------------------------------------------------------------------
# deid


def _profile(args: argparse.Namespace, config: Any) -> Profile:
    paths = args.rules or rule_paths(config)
    try:
        return load_profile(paths)
    except RuleFileError as exc:
        for problem in exc.problems:
            print(f"site-connector: {problem}", file=sys.stderr)
        raise CommandError("the rule files have errors (see above; 'site-connector rules check' lists them)",
                           exitcodes.USAGE) from None


def _provider(args: argparse.Namespace, config: Any) -> IdentityProvider:
    if args.ephemeral:
        print("site-connector: --ephemeral: pseudonyms, offsets and UIDs are NOT the site's; do not send these "
              "files to the registry", file=sys.stderr)
        return EphemeralIdentityProvider(site_id=config.site.id)
    from connector.linkage import LinkageError, open_identity_provider

    try:
        return open_identity_provider(config)
    except LinkageError as exc:
        raise CommandError(f"cannot open the site's linkage table: {exc}", exitcodes.UNAVAILABLE) from None


def _input_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CommandError(f"input not found: {root}", exitcodes.USAGE)
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".part"))


def _by_study(files: list[Path]) -> list[list[tuple[Path, frozenset[str]]]]:
    """Files grouped by study (studies in order of first appearance, files in input order), each
    with the person-name tokens of every file of its study (the PHI guard looks for all of them in
    each object's free text). A study is the unit of the burned-in text check's choice of images."""
    from pydicom import dcmread

    study_of: dict[Path, str] = {}
    for path in files:
        try:
            study_of[path] = str(dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                                 .get("StudyInstanceUID", ""))
        except Exception:
            study_of[path] = ""  # unreadable: the engine quarantines it
    groups: dict[str, list[Path]] = {}
    for path, study in study_of.items():
        groups.setdefault(study, []).append(path)
    names = {study: study_name_tokens(paths) for study, paths in groups.items()}
    return [[(path, names[study]) for path in paths] for study, paths in groups.items()]


def run_deid(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    profile = _profile(args, config)
    files = _input_files(args.input)
    out_root: Path = args.output
    out_root.mkdir(parents=True, exist_ok=True)
    qdir = args.quarantine or SiteLayout.from_config(config).quarantine
    provider = _provider(args, config)
    provider_errors: tuple[type[BaseException], ...] = ()
    if not args.ephemeral:
        from connector.linkage import LinkageError

        provider_errors = (LinkageError,)
    try:
        vocabulary = load_vocabulary(config.deid.extra_vocabulary, vocabulary_files(config))
    except VocabularyError as exc:
        raise CommandError(f"configuration error: {exc}", exitcodes.USAGE) from None
    deidentified = 0
    privacy: dict[str, PrivacyReport] = {}
    quarantined: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    try:
        engine = DeidEngine(profile, provider, site_id=config.site.id, fsync=config.storage.fsync,
                            vocabulary=vocabulary)
        recorder = StudyRecorder(provider)
        for study_files in _by_study(files):
            ocr_check = BurnedInTextCheck(config.deid.ocr)  # the daemon's check, per study
            written: dict[Path, tuple[Path, str, dict[str, Any]]] = {}  # output -> (input, label, details)
            study_uid = ""
            for path, study_names in study_files:
                label = str(path.relative_to(args.input)) if path != args.input else path.name
                try:
                    result = engine.process_path(path, study_names)
                    result, sample_later = ocr_check.check_now(path, result)
                    privacy.setdefault(result.study_instance_uid or "quarantined", PrivacyReport()).add(result.details)
                    if result.status == "ok":
                        assert result.data is not None
                        folder = out_root / result.study_instance_uid / result.series_instance_uid
                        folder.mkdir(parents=True, exist_ok=True)
                        target = folder / f"{result.sop_instance_uid}.dcm"
                        write_file_durably(target, result.data, sync=engine.fsync)
                        recorder.record(result)
                        deidentified += 1
                        study_uid = result.study_instance_uid
                        if sample_later:
                            ocr_check.track(target, result.identifiers)
                            written[target] = (path, label, result.details)
                    elif result.status == "skip":
                        skipped.append({"file": label, "reason": result.reason})
                    else:
                        quarantine_result(qdir, path, result)
                        quarantined.append({"file": label, "reason": result.reason})
                except OSError as exc:  # unreadable input or a full disk: report, carry on with the rest
                    failed.append({"file": label, "reason": f"io-error:{type(exc).__name__}"})
            for target, identifiers in ocr_check.sampled():  # first, middle, last of each series
                assert isinstance(target, Path)
                source, label, details = written[target]
                try:
                    findings = ocr_check.check_written(target.read_bytes(), identifiers, source)
                except OSError as exc:
                    findings = [phi_guard.Finding(burned_in_text.FAILURE, f"output: {type(exc).__name__}")]
                if findings:
                    target.unlink(missing_ok=True)
                    deidentified -= 1
                    quarantine(qdir, QUARANTINE_STAGE, findings[0].code, source_path=source,
                               details=ocr_details(findings, details))
                    quarantined.append({"file": label, "reason": findings[0].code})
            if ocr_check.images:
                privacy.setdefault(study_uid or "quarantined", PrivacyReport()).pixels_read_for_text += ocr_check.images
    except provider_errors as exc:
        raise CommandError(f"the site's linkage table failed: {exc}", exitcodes.UNAVAILABLE) from None
    finally:
        close = getattr(provider, "close", None)
        if callable(close):
            close()
    summary = {"deidentified": deidentified, "quarantined": quarantined, "skipped": skipped, "failed": failed,
               "output": str(out_root), "quarantine_dir": str(qdir), "rules": profile.name,
               "privacy": {study: report.as_dict() for study, report in sorted(privacy.items())}}
    if args.json:
        print_json(summary)
    else:
        print(f"de-identified: {deidentified}  quarantined: {len(quarantined)}  skipped: {len(skipped)}  "
              f"failed: {len(failed)}")
        for item in quarantined:
            print(f"  quarantined  {item['file']}: {item['reason']}")
        for item in skipped:
            print(f"  skipped      {item['file']}: {item['reason']}")
        for item in failed:
            print(f"  FAILED       {item['file']}: {item['reason']}")
        for study, report in sorted(privacy.items()):
            r = report.as_dict()
            print(f"  privacy      study {study[:24]}: {r['tokens_replaced']} words and {r['spans_replaced']} "
                  f"dates/numbers/addresses replaced in {r['text_values_cleaned']} text values, "
                  f"{r['elements_removed']} elements removed ({len(report.removed)} distinct tags)")
        print(f"output: {out_root}   quarantine: {qdir}")
    return exitcodes.FAILURE if failed else exitcodes.OK


# ---------------------------------------------------------------------------------------------
# rules check / explain


def run_check(args: argparse.Namespace) -> int:
    results = []
    for path in args.files:
        try:
            profile = load_profile([path])
        except RuleFileError as exc:
            results.append({"file": str(path), "ok": False, "errors": [str(p) for p in exc.problems]})
            continue
        own = profile.files[-1]
        results.append({"file": str(path), "ok": True, "rules": len(own.rules), "filters": len(own.filters),
                        "pixel_regions": len(own.pixel_regions), "loaded_files": [f.path.name for f in profile.files],
                        "warnings": [str(w) for f in profile.files for w in f.warnings]})
    ok = all(r["ok"] for r in results)
    if args.json:
        print_json({"ok": ok, "files": results})
    else:
        for r in results:
            if r["ok"]:
                print(f"{r['file']}: ok ({r['rules']} rules, {r['filters']} filters, {r['pixel_regions']} pixel "
                      f"region rules; with includes: {', '.join(r['loaded_files'])})")
                for w in r["warnings"]:
                    print(f"  warning: {w}")
            else:
                for err in r["errors"]:
                    print(err)
    return exitcodes.OK if ok else exitcodes.FAILURE


def _rule_info(rule: Any, level: str) -> dict[str, Any]:
    r = rule.rule
    info = {"file": r.where.file, "line": r.where.line, "selector": r.selector.text(), "action": r.action,
            "level": level}
    for key in ("note", "table", "name"):
        if getattr(r, key):
            info[key] = getattr(r, key)
    return info


def explain(profile: Profile, tag_text: str, creator: str | None = None, sop_class: str | None = None
            ) -> dict[str, Any]:
    """The decision for one attribute and the reasoning behind it, as a dict (also used by tests).
    ``sop_class``: as a top-level attribute of an object of that class (typed decisions)."""
    compiled = CompiledRules(profile)
    text = tag_text.strip()
    if creator is not None:  # (0019,xx23): the block does not matter, only the low byte
        group, _, element = text.strip("()").replace(" ", "").partition(",")
        if element.lower().startswith("xx"):
            text = f"{group},10{element[2:]}"
    try:
        sel = parse_tag(text)
    except ValueError as exc:
        raise CommandError(str(exc), exitcodes.USAGE) from None
    if sel.kind != "tag":
        raise CommandError("explain needs one tag, not a range", exitcodes.USAGE)
    tag = sel.tag
    out: dict[str, Any] = {"tag": f"({tag >> 16:04X},{tag & 0xFFFF:04X})", "precedence": PRECEDENCE}
    if (tag >> 16) & 1:
        if not creator:
            raise CommandError("a private tag needs --creator (the private creator string)", exitcodes.USAGE)
        out["creator"] = normalise_creator(creator)
        decision = compiled.private(tag, normalise_creator(creator))
        cands = compiled.private_candidates(tag, creator)
    else:
        entry = dictionary_entry(tag)
        out["keyword"], out["vr"] = (entry[1], entry[0]) if entry else ("", "")
        decision = compiled.public(tag)
        cands = compiled.public_candidates(tag)
        typed = compiled.for_class(sop_class) if sop_class else None
        if sop_class:
            out["sop_class"] = sop_class
            kind = profile.attribute_types.get(sop_class, {}).get(tag, 3)
            out["iod_type"] = kind if typed is not None else None
            if typed is not None and typed(tag).action != decision.action:
                out["profile_action"] = decision.action
                out["iod_type_note"] = (f"type {kind} in this SOP class's IOD (iod-attribute-types.yaml): "
                                        f"{decision.action} becomes {typed(tag).action}")
                decision = typed(tag)
            elif typed is None:
                out["iod_type_note"] = "no attribute types for this SOP class: the rules apply as written"
    out["action"] = decision.action
    out["meaning"] = ACTION_TEXT[decision.action]
    if cands:
        out["basis"] = "rule"
        out["rule"] = _rule_info(cands[0].rule, cands[0].level)
        out["overrides"] = [_rule_info(c.rule, c.level) for c in cands[1:]]
    else:
        out["basis"] = decision.basis
        out["rule"] = None
        out["overrides"] = []
        out["why"] = {
            "unlisted": "no rule names this standard attribute; the 'unlisted' default applies",
            "unknown": "the data dictionary does not know this tag; the 'unknown' default applies (fail closed)",
            "group-length": "group lengths are dropped (they are recomputed or unneeded)",
            "private-default": "no rule names this private element; private elements are removed by default",
        }.get(decision.basis, decision.basis)
    if decision.basis == "unlisted" and decision.action == "keep":
        out["in_clean_sequence"] = "inside a sequence whose action is clean, this attribute is cleaned instead"
    return out


def run_explain(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    profile = _profile(args, config)
    info = explain(profile, args.tag, args.creator, args.sop_class)
    if args.json:
        print_json(info)
        return exitcodes.OK
    name = f" {info.get('keyword', '')}" if info.get("keyword") else ""
    vr = f" [{info['vr']}]" if info.get("vr") else ""
    creator = f" creator {info['creator']!r}" if info.get("creator") else ""
    print(f"{info['tag']}{name}{vr}{creator}")
    print(f"  action:  {info['action']} ({info['meaning']})")
    if info["rule"]:
        r = info["rule"]
        extra = f"; PS3.15 Table E.1-1 code {r['table']}" if r.get("table") else ""
        print(f"  rule:    {r['file']}:{r['line']}  {r['selector']} -> {r['action']}  [{r['level']}{extra}]")
        if r.get("note"):
            print(f"  note:    {r['note']}")
        for o in info["overrides"]:
            extra = f", code {o['table']}" if o.get("table") else ""
            print(f"  overrides {o['file']}:{o['line']}  {o['selector']} -> {o['action']}  [{o['level']}{extra}]")
    else:
        print(f"  why:     {info['why']}")
    if info.get("iod_type_note"):
        print(f"  IOD:     {info['iod_type_note']}")
    if info.get("in_clean_sequence"):
        print(f"  note:    {info['in_clean_sequence']}")
    print(f"  order:   {info['precedence']}")
    return exitcodes.OK
