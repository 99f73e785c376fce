"""Issue 24, row 10 (passwords): ``site-connector users add`` (and ``add --replace``, the password
change) refuses the commonest passwords, with or without the usual digits and symbols, the user's
own name, and short ones; the list ships inside the package."""

from __future__ import annotations

import contextlib
import io
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from connector.cli.main import main
from connector.web.password_policy import password_problem
from connector.web.users import UserError, UserFile

COMMON = ["password123", "Password123!", "P@ssw0rd2024", "qwertyuiop", "1234567890", "Summer2024!", "$ummer2025",
          "iloveyou12", "letmein2024", "Welcome123!", "Hospital2025", "radiology1!", "passwordpassword", "abc123abc123"]
FINE = ["amber kettle 42 violin", "correct horse battery staple", "nurse-rota-tuesday-bike", "Tr0ub4dor&3 goes on"]


def _users(tmp_path: Path, *args: str, stdin: str) -> tuple[int, str, str]:
    config = tmp_path / "connector.toml"
    if not config.exists():
        config.write_text('[storage]\ndata_dir = "data"\n')
    out, err = io.StringIO(), io.StringIO()
    old_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["-c", str(config), "users", *args])
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def test_users_add_refuses_common_passwords(tmp_path: Path) -> None:
    users = UserFile(tmp_path / "data" / "web" / "users.json")
    for i, password in enumerate(COMMON[:3]):  # the command as IT runs it (each run costs a scrypt hash)
        rc, out, err = _users(tmp_path, "add", f"nurse{i}", "--password-stdin", stdin=password + "\n")
        assert rc == 2 and "too common" in err, (password, rc, err)
        assert password not in out + err
    rc, _out, err = _users(tmp_path, "add", "nurse9", "--password-stdin", stdin=FINE[0] + "\n")
    assert rc == 0, err
    assert [u.name for u in users.list()] == ["nurse9"] and users.verify("nurse9", FINE[0])
    for password in COMMON:  # the same check the command makes, for the whole sample
        with pytest.raises(UserError, match="too common"):
            users.add("nurse1", password)
    assert [u.name for u in users.list()] == ["nurse9"]
    assert [password_problem(p, "nurse1") for p in FINE] == [None] * len(FINE)


def test_password_change_is_held_to_the_same_policy(tmp_path: Path) -> None:
    users = UserFile(tmp_path / "data" / "web" / "users.json")
    assert _users(tmp_path, "add", "maria.rossi", "--password-stdin", stdin="amber kettle 42 violin\n")[0] == 0
    for password, why in (("Welcome2025!", "too common"), ("Maria.Rossi2025", "user name"),
                          ("short1!", "at least 10"), ("zzzzzzzzzzzz", "different characters")):
        rc, _out, err = _users(tmp_path, "add", "maria.rossi", "--replace", "--password-stdin", stdin=password + "\n")
        assert rc == 2 and why in err, (password, err)
    assert users.verify("maria.rossi", "amber kettle 42 violin")  # unchanged
    with pytest.raises(UserError, match="too common"):
        users.add("maria.rossi", "P@ssw0rd!!", replace=True)


def test_the_list_ships_as_package_data() -> None:
    listed = resources.files("connector.web").joinpath("common_passwords.txt")
    entries = [line for line in listed.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert 300 <= len(entries) <= 1000 and "password" in entries and "qwertyuiop" in entries
    assert all(e == e.strip().lower() for e in entries)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "common_passwords.txt" in pyproject["tool"]["setuptools"]["package-data"]["connector.web"]
