"""``site-connector users``: manage the dashboard's staff logins (add, list, role, remove).

Roles: ``it`` (default: every page and action except identifier search and the follow-up import)
and ``coordinator`` (may also find a patient's studies by MRN or accession number, and import
follow-up files: both audited linkage lookups).

Passwords are read from the terminal without echo, or from stdin with ``--password-stdin`` (for
provisioning scripts), never from the command line where ``ps`` and shell history would show them.
``add`` (and ``add --replace``, the password change) refuses short and common passwords
(:mod:`connector.web.password_policy`).
Changes take effect in a running daemon at once: it re-reads the users file on change.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from connector.cli import exitcodes
from connector.cli.common import CommandError, add_config_option, config_from_args, print_json
from connector.web.users import users_path
from connector.web.users import DEFAULT_ROLE, MIN_PASSWORD_LENGTH, ROLES, UserError, UserFile


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="dashboard logins for site staff (add, list, role, remove)",
                       description="Manage the users who may sign in to the local dashboard. The users file "
                       "([http] users_file, default <data_dir>/web/users.json) holds scrypt hashes only.")
    add_config_option(p)
    users_sub = p.add_subparsers(dest="users_command", metavar="ACTION")
    users_sub.required = True

    add = users_sub.add_parser("add", help="add a user, or with --replace change a password (asks for it)",
                               description="Add a dashboard user. The password is asked twice on the terminal, "
                               "or read as the first line of stdin with --password-stdin. It must be at least "
                               f"{MIN_PASSWORD_LENGTH} characters, not one of the commonest passwords (nor one "
                               "with digits or symbols added) and not the user name; a passphrase of a few "
                               "ordinary words is fine.")
    add_config_option(add)
    add.add_argument("name", help="user name (letters, digits, '.', '_', '-')")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.add_argument("--replace", action="store_true", help="set a new password for an existing user")
    add.add_argument("--role", choices=ROLES, default=None,
                     help="it (default for a new user) or coordinator (may search by patient identifiers and "
                          "import follow-up files)")
    add.set_defaults(func=run_add)

    role = users_sub.add_parser("role", help="change a user's role",
                                description="Set a dashboard user's role: it, or coordinator (may find a "
                                "patient's studies by MRN or accession number, and import follow-up files). Takes effect at "
                                "the next page.")
    add_config_option(role)
    role.add_argument("name", help="user name")
    role.add_argument("role", choices=ROLES, help="the new role")
    role.set_defaults(func=run_role)

    lst = users_sub.add_parser("list", help="list users", description="List dashboard users (names only).")
    add_config_option(lst)
    lst.add_argument("--json", action="store_true", help="print one JSON object")
    lst.set_defaults(func=run_list)

    rm = users_sub.add_parser("remove", help="remove a user",
                              description="Remove a dashboard user; their open sessions end at once.")
    add_config_option(rm)
    rm.add_argument("name", help="user name")
    rm.set_defaults(func=run_remove)


def _users(args: argparse.Namespace) -> UserFile:
    return UserFile(users_path(config_from_args(args)))


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        return password[:-1] if password.endswith("\r") else password
    if not sys.stdin.isatty():
        raise CommandError("no terminal to ask for the password; use --password-stdin", exitcodes.USAGE)
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise CommandError("the passwords differ; nothing changed", exitcodes.USAGE)
    return first


def run_add(args: argparse.Namespace) -> int:
    users = _users(args)
    password = _read_password(args)
    try:
        users.add(args.name, password, replace=args.replace, role=args.role)
    except UserError as exc:
        raise CommandError(str(exc), exitcodes.USAGE) from None
    print(f"user {args.name} {'updated' if args.replace else 'added'} with role {users.role(args.name) or DEFAULT_ROLE} "
          f"({users.path})")
    return exitcodes.OK


def run_role(args: argparse.Namespace) -> int:
    try:
        _users(args).set_role(args.name, args.role)
    except UserError as exc:
        raise CommandError(str(exc), exitcodes.USAGE) from None
    print(f"user {args.name} now has role {args.role}")
    return exitcodes.OK


def run_list(args: argparse.Namespace) -> int:
    try:
        listed = _users(args).list()
    except UserError as exc:
        raise CommandError(str(exc), exitcodes.FAILURE) from None
    if args.json:
        print_json({"users": [{"name": u.name, "role": u.role, "created_at": u.created_at} for u in listed]})
    elif not listed:
        print("no users yet; add one with: site-connector users add NAME")
    else:
        for u in listed:
            print(f"{u.name}\t{u.role}\t{u.created_at}")
    return exitcodes.OK


def run_remove(args: argparse.Namespace) -> int:
    try:
        _users(args).remove(args.name)
    except UserError as exc:
        raise CommandError(str(exc), exitcodes.USAGE) from None
    print(f"user {args.name} removed")
    return exitcodes.OK
