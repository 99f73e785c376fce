"""``site-connector rules vocabulary``: the free-text vocabulary, and words to add from the site's studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json
from connector.deid.rule_sources import vocabulary_files
from connector.deid.vocabulary_suggest import suggest_words
from connector.vocabulary import VocabularyError, load_vocabulary


def register(rules_sub: argparse._SubParsersAction) -> None:
    v = rules_sub.add_parser(
        "vocabulary", help="words the free-text cleaner keeps; --suggest proposes words from your studies",
        description="Show the size of the free-text vocabulary (shipped words plus [deid] extra_vocabulary and "
        "vocabulary_files), or with --suggest FOLDER read the site's own studies and propose words to add: only "
        "words seen in the descriptions of at least --min-patients distinct patients and never in any person-name "
        "element of the folder. Prints counts only, never which patient had which word. Review every proposal "
        "before adding it to a vocabulary file.")
    add_config_option(v)
    v.add_argument("--suggest", metavar="FOLDER", type=Path, help="a folder of the site's studies (searched recursively)")
    v.add_argument("--min-patients", metavar="N", type=int, default=20,
                   help="propose a word only when this many distinct patients have it (default 20)")
    v.add_argument("--out", metavar="FILE", type=Path,
                   help="also write the proposals as a vocabulary file to review (never overwrites)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=run_vocabulary)


def run_vocabulary(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        vocabulary = load_vocabulary(config.deid.extra_vocabulary, vocabulary_files(config))
    except VocabularyError as exc:
        raise CommandError(f"configuration error: {exc}", exitcodes.USAGE) from None
    if args.min_patients < 1:
        raise CommandError("--min-patients must be at least 1", exitcodes.USAGE)
    if args.suggest is None:
        if args.json:
            print_json({"words": len(vocabulary)})
        else:
            print(f"vocabulary: {len(vocabulary)} words (shipped rules/vocabulary/ plus the site's)")
        return exitcodes.OK
    if not args.suggest.is_dir():
        raise CommandError(f"not a folder: {args.suggest}", exitcodes.USAGE)
    if args.out is not None and args.out.exists():
        raise CommandError(f"{args.out} exists; choose another --out", exitcodes.USAGE)
    files = sorted(p for p in args.suggest.rglob("*") if p.is_file())
    result = suggest_words(files, vocabulary, args.min_patients)
    if args.out is not None:
        args.out.write_text("# Proposed by site-connector rules vocabulary --suggest: review every word before use.\n"
                            + "".join(f"{w}  # {n} patients\n" for w, n in result.proposed), encoding="utf-8")
    if args.json:
        print_json(result.as_dict())
        return exitcodes.OK
    print(f"read {result.files_read} files ({result.files_unreadable} unreadable) of {result.patients} patients; "
          f"{result.words_seen} distinct words in descriptions: {result.words_known} already known, "
          f"{result.words_in_names} seen in person names (never proposed), {result.words_too_rare} in fewer than "
          f"{args.min_patients} patients")
    for word, patients in result.proposed:
        print(f"  {word:<24} {patients} patients")
    if not result.proposed:
        print("  nothing to propose")
    return exitcodes.OK
