"""``site-connector linkage``: coordinator access to the encrypted linkage table and its keys.

Every read of identifiers and every key operation is recorded in the audit log first; if it cannot
be recorded, nothing is shown. Exit codes: 0 ok, 1 failed / not found / damage found, 2 key or
configuration problem (nothing was changed).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json
from connector.linkage.errors import LinkageError, LinkageKeyError


def _prompt() -> Any:
    return getpass.getpass if sys.stdin.isatty() else None


def _open(args: argparse.Namespace) -> Any:
    from connector.linkage.provider import OpenOptions, open_linkage

    config = config_from_args(args)
    return config, open_linkage(config, OpenOptions(prompt=_prompt(), create=False, role="cli"))


def _guard(handler: Any) -> Any:
    """Map linkage errors to one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except LinkageKeyError as exc:
            raise CommandError(f"linkage: {exc}", exitcodes.USAGE) from None
        except LinkageError as exc:
            raise CommandError(f"linkage: {exc}", exitcodes.FAILURE) from None

    return run


# ---------------------------------------------------------------------------------------------


def _lookup(args: argparse.Namespace) -> int:
    _config, provider = _open(args)
    with provider:
        if args.pseudonym is not None:
            ident = provider.lookup_pseudonym(args.pseudonym)
            if ident is None:
                if args.json:
                    print_json({"found": False, "pseudonym": args.pseudonym})
                print("linkage: no subject with this pseudonym", file=sys.stderr)
                return exitcodes.FAILURE
            data = ident.as_dict()
            if args.json:
                print_json({"found": True, **data})
            else:
                for key in ("pseudonym", "patient_id", "issuer", "name", "birth_date", "sex", "index_date",
                            "date_offset_days"):
                    print(f"{key}: {data[key]}")
                for s in data["studies"]:
                    print(f"study: {s['deidentified_study_uid']} <- {s['original_study_uid']} "
                          f"(accession {s['accession_number'] or '-'})")
            return exitcodes.OK
        patient_id = sys.stdin.readline().rstrip("\r\n") if args.patient_id == "-" else args.patient_id
        found = provider.lookup_patient(patient_id, args.issuer)
        if found is None:
            if args.json:
                print_json({"found": False, "pseudonym": None})
            print("linkage: no subject for this patient ID and issuer", file=sys.stderr)
            return exitcodes.FAILURE
        if args.json:
            print_json({"found": True, "pseudonym": found.pseudonym, "date_offset_days": found.date_offset_days,
                        "index_date": found.index_date})
        else:
            print(found.pseudonym)
        return exitcodes.OK


def _export(args: argparse.Namespace) -> int:
    from connector.linkage.export import export_master_list

    if not args.confirm_identifiers:
        raise CommandError(
            "linkage export writes patient identifiers in clear; add --confirm-identifiers to proceed", exitcodes.USAGE
        )
    config, provider = _open(args)
    with provider:
        result = export_master_list(provider, Path(args.out), protected_dirs=(config.storage.data_dir,),
                                    overwrite=args.force)
    bad = [e.row_ref for e in result.corrupt]
    if args.json:
        print_json({"out": str(result.path), "rows": result.rows, "corrupt_rows": bad})
    else:
        print(f"exported {result.rows} subjects to {result.path}")
    for ref in bad:
        print(f"linkage: row {ref} failed authentication and was left out", file=sys.stderr)
    return exitcodes.FAILURE if bad else exitcodes.OK


def _new_passphrase(args: argparse.Namespace) -> str:
    if args.new_passphrase_env:
        value = os.environ.get(args.new_passphrase_env, "")
        if not value:
            raise CommandError(f"${args.new_passphrase_env} is empty or not set", exitcodes.USAGE)
        return value
    if not sys.stdin.isatty():
        raise CommandError("give the new passphrase with --new-passphrase-env VAR (no terminal to prompt)", exitcodes.USAGE)
    first = getpass.getpass("New linkage passphrase: ")
    if first != getpass.getpass("Repeat the new passphrase: "):
        raise CommandError("the passphrases differ; nothing was changed", exitcodes.USAGE)
    return first


def _rotate(args: argparse.Namespace) -> int:
    from connector.linkage.rotation import rotate_key

    config, provider = _open(args)
    with provider:
        kind = args.to or provider.keyring().kek_kind
        new_passphrase = _new_passphrase(args) if kind == "passphrase" else None
        result = rotate_key(provider, to_kind=kind, new_passphrase=new_passphrase,
                            scrypt_log_n=config.linkage.scrypt_log_n)
        record = provider.keyring()
    out = {"generation": result.generation, "subjects": result.subjects, "studies": result.studies,
           "kek_kind": record.kek_kind, "kek_fingerprint": record.kek_fingerprint}
    if args.json:
        print_json(out)
    else:
        print(f"rotated to key generation {result.generation} ({record.kek_kind}, fingerprint "
              f"{record.kek_fingerprint}): {result.subjects} subjects and {result.studies} studies re-encrypted")
        print("take a new backup now: older backups open only with the retired key")
        if record.kek_kind != config.linkage.key_source:
            print(f"note: [linkage] key_source is '{config.linkage.key_source}'; the table now uses "
                  f"'{record.kek_kind}' (the table's own record wins)")
    return exitcodes.OK


def _audit(args: argparse.Namespace) -> int:
    _config, provider = _open(args)
    with provider:
        if args.verify:
            report = provider.verify_audit()
            if args.json:
                print_json(report.as_dict())
            elif report.ok:
                print(f"audit log OK: {report.entries} entries, chain intact")
            else:
                print(f"audit log BROKEN at entry {report.first_bad_seq}: {report.reason}", file=sys.stderr)
            return exitcodes.OK if report.ok else exitcodes.FAILURE
        entries = provider.audit_log.entries()[-args.tail :]
        if args.json:
            print_json(entries)
        else:
            for e in entries:
                details = " ".join(f"{k}={v}" for k, v in sorted(e.get("details", {}).items()))
                print(f"{e.get('seq')} {e.get('time')} {e.get('user')} {e.get('action')} {details}".rstrip())
        return exitcodes.OK


def _backup(args: argparse.Namespace) -> int:
    from connector.linkage.backup import create_backup

    _config, provider = _open(args)
    with provider:
        result = create_backup(provider, Path(args.out), overwrite=args.force)
    out = {"out": str(result.path), "bytes": result.bytes, "subjects": result.subjects, "studies": result.studies,
           "kek_fingerprint": result.kek_fingerprint}
    if args.json:
        print_json(out)
    else:
        print(f"backup of {result.subjects} subjects and {result.studies} studies written to {result.path} "
              f"(needs key {result.kek_fingerprint} to restore)")
    return exitcodes.OK


def _restore(args: argparse.Namespace) -> int:
    from connector.linkage.backup import restore_backup
    from connector.linkage.provider import OpenOptions, kek_source_for, open_linkage
    from connector.linkage.paths import resolved_paths

    config = config_from_args(args)
    source = kek_source_for(config, OpenOptions(prompt=_prompt()))
    result = restore_backup(Path(args.from_path), resolved_paths(config).db, source,
                            key_file=Path(args.key_file) if args.key_file else None, force=args.force,
                            sync=config.storage.fsync)
    with open_linkage(config, OpenOptions(passphrase=source.passphrase, create=False, role="cli")) as provider:
        provider.audit("restore", source=str(args.from_path), subjects=result.subjects, studies=result.studies,
                       rewrapped=result.rewrapped)
    if args.json:
        print_json({"subjects": result.subjects, "studies": result.studies, "rewrapped": result.rewrapped})
    else:
        print(f"restored {result.subjects} subjects and {result.studies} studies"
              + (" (re-locked with the current key file)" if result.rewrapped else ""))
    return exitcodes.OK


def _check(args: argparse.Namespace) -> int:
    _config, provider = _open(args)
    with provider:
        report = provider.store.check()
    bad = [{"table": e.table, "column": e.column, "row": e.row_ref} for e in report.corrupt]
    if args.json:
        print_json({"subjects": report.subjects, "studies": report.studies, "corrupt": bad})
    else:
        print(f"checked {report.subjects} subjects and {report.studies} studies: {len(bad)} damaged")
        for b in bad:
            print(f"damaged: {b['table']}.{b['column']} of row {b['row']}")
    return exitcodes.FAILURE if bad else exitcodes.OK


def _info(args: argparse.Namespace) -> int:
    _config, provider = _open(args)
    with provider:
        record = provider.keyring()
        counts = provider.store.counts()
        out = {"db": str(provider.paths.db), "audit_log": str(provider.paths.audit_log),
               "key_file": str(provider.paths.key_file) if record.kek_kind == "file" else None,
               "kek_kind": record.kek_kind, "kek_fingerprint": record.kek_fingerprint,
               "generation": record.generation, **counts}
    if args.json:
        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return exitcodes.OK


# ---------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "linkage",
        help="look up, export, back up and re-key the site's encrypted linkage table",
        description="Coordinator access to the site-held linkage between pseudonyms and patients. Every read "
        "of identifiers and every key operation is recorded in the tamper-evident audit log.",
        epilog="Exit codes: 0 ok, 1 failed or not found, 2 key or configuration problem (nothing changed).",
    )
    add_config_option(parser)
    sub = parser.add_subparsers(dest="linkage_command", metavar="ACTION")
    sub.required = True

    def add(name: str, handler: Any, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_option(p)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_guard(handler))
        return p

    p = add("lookup", _lookup, "find the pseudonym of a patient, or the identifiers behind a pseudonym (audited)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient-id", metavar="ID", help="patient ID ('-' reads it from stdin, keeping it out of ps)")
    who.add_argument("--pseudonym", metavar="P", help="pseudonym, e.g. SITE01-7K3M9QX2 (prints identifiers)")
    p.add_argument("--issuer", default="", metavar="I", help="issuer of the patient ID (default: none)")

    p = add("export", _export, "write the master list (pseudonym, patient ID, issuer, name, birth date, sex, "
            "index date) as CSV for the coordinator (audited; identifiers in clear)")
    p.add_argument("--out", required=True, metavar="FILE", help="CSV file to write, outside the site data folder")
    p.add_argument("--confirm-identifiers", action="store_true",
                   help="confirm that you intend to write patient identifiers in clear")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = add("rotate-key", _rotate, "new key-encryption key; re-encrypt every row in one transaction")
    p.add_argument("--to", choices=("file", "passphrase"), help="switch the kind of key (default: keep it)")
    p.add_argument("--new-passphrase-env", metavar="VAR", help="environment variable holding the new passphrase")

    p = add("audit", _audit, "show or verify the audit log")
    p.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 naming the first bad entry")
    p.add_argument("--tail", type=int, default=20, metavar="N", help="show the last N entries (default 20)")

    p = add("backup", _backup, "write an encrypted, consistent backup (safe while the daemon runs)")
    p.add_argument("--out", required=True, metavar="FILE", help="backup file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")

    p = add("restore", _restore, "replace the linkage table from an encrypted backup (stop the daemon first)")
    p.add_argument("--from", dest="from_path", required=True, metavar="FILE", help="backup file")
    p.add_argument("--key-file", metavar="PATH", help="the (retired) key file the backup was made with")
    p.add_argument("--force", action="store_true", help="replace an existing linkage table")

    add("check", _check, "decrypt and authenticate every row; list damaged ones")
    add("info", _info, "paths, key kind and fingerprint, row counts")
