"""The users file and ``site-connector users``: scrypt hashes, 0600, no password on the command line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from connector.cli.main import main
from connector.web.users import UserError, UserFile, check_password, hash_password


def test_hash_is_salted_scrypt() -> None:
    a, b = hash_password("a long password"), hash_password("a long password")
    assert a != b and a.startswith("scrypt$")
    assert check_password("a long password", a) and check_password("a long password", b)
    assert not check_password("a long passwore", a)
    assert not check_password("anything", "md5$broken")


def test_user_file(tmp_path: Path) -> None:
    users = UserFile(tmp_path / "web" / "users.json")
    assert users.list() == []
    users.add("alice", "first password!")
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    assert "first password!" not in users.path.read_text()
    assert users.verify("alice", "first password!")
    assert not users.verify("alice", "wrong password!")
    assert not users.verify("bob", "first password!")
    with pytest.raises(UserError, match="already exists"):
        users.add("alice", "second password")
    users.add("alice", "second password", replace=True)
    assert users.verify("alice", "second password") and not users.verify("alice", "first password!")
    with pytest.raises(UserError, match="at least"):
        users.add("carol", "short")
    with pytest.raises(UserError, match="user name"):
        users.add("../etc", "long enough password")
    users.remove("alice")
    assert users.list() == [] and not users.verify("alice", "second password")
    with pytest.raises(UserError, match="no user"):
        users.remove("alice")


def test_damaged_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        UserFile(path).list()


def _cli(tmp_path: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The command in this process (each fresh interpreter costs seconds); stdin is not a terminal."""
    config = tmp_path / "connector.toml"
    if not config.exists():
        config.write_text('[storage]\ndata_dir = "data"\n')
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["-c", str(config), "users", *args])
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def test_users_cli_entry_point(tmp_path: Path) -> None:
    (tmp_path / "connector.toml").write_text('[storage]\ndata_dir = "data"\n')
    r = subprocess.run([sys.executable, "-m", "connector", "-c", str(tmp_path / "connector.toml"), "users", "add",
                        "nurse.one", "--password-stdin"], input="a fine password\n", capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert UserFile(tmp_path / "data" / "web" / "users.json").verify("nurse.one", "a fine password")
    assert "a fine password" not in r.stdout + r.stderr


def test_users_cli(tmp_path: Path) -> None:
    rc, out, err = _cli(tmp_path, "add", "nurse.one", "--password-stdin", stdin="a fine password\r\n")
    assert rc == 0, err
    assert UserFile(tmp_path / "data" / "web" / "users.json").verify("nurse.one", "a fine password")

    rc, out, err = _cli(tmp_path, "add", "nurse.one", "--password-stdin", stdin="another password\n")
    assert rc == 2 and "already exists" in err
    rc, out, err = _cli(tmp_path, "add", "nurse.two", "--password-stdin", stdin="short\n")
    assert rc == 2 and "at least" in err
    rc, out, err = _cli(tmp_path, "add", "nurse.two")  # no terminal, no --password-stdin
    assert rc == 2 and "--password-stdin" in err

    rc, out, err = _cli(tmp_path, "list", "--json")
    assert rc == 0
    assert [u["name"] for u in json.loads(out)["users"]] == ["nurse.one"]
    assert _cli(tmp_path, "remove", "nurse.one")[0] == 0
    assert _cli(tmp_path, "remove", "nurse.one")[0] == 2
    assert "no users yet" in _cli(tmp_path, "list")[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand files to another user")
def test_root_leaves_the_file_to_the_data_folder_owner(tmp_path: Path) -> None:
    """`sudo site-connector users add` must not lock the service user out of its own users file."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 4242, 4343)
    users = UserFile(data / "web" / "users.json")
    users.add("alice", "a long password")
    for item in (data / "web", users.path):
        assert (item.stat().st_uid, item.stat().st_gid) == (4242, 4343)


def test_roles(tmp_path: Path) -> None:
    rc, out, err = _cli(tmp_path, "add", "it.one", "--password-stdin", stdin="a fine password\n")
    assert rc == 0 and "role it" in out
    rc, out, err = _cli(tmp_path, "add", "coord.one", "--role", "coordinator", "--password-stdin",
                        stdin="a fine password\n")
    assert rc == 0 and "role coordinator" in out
    rc, out, err = _cli(tmp_path, "list", "--json")
    assert {u["name"]: u["role"] for u in json.loads(out)["users"]} == {"it.one": "it", "coord.one": "coordinator"}
    assert _cli(tmp_path, "role", "it.one", "coordinator")[0] == 0
    assert UserFile(tmp_path / "data" / "web" / "users.json").role("it.one") == "coordinator"
    assert _cli(tmp_path, "role", "nobody", "it")[0] == 2
    with pytest.raises(SystemExit):  # argparse refuses an unknown role
        _cli(tmp_path, "role", "it.one", "admin")
    # a new password keeps the role unless one is given
    assert _cli(tmp_path, "add", "coord.one", "--replace", "--password-stdin", stdin="another password\n")[0] == 0
    assert UserFile(tmp_path / "data" / "web" / "users.json").role("coord.one") == "coordinator"
    # a file written before roles existed: everyone is "it"
    path = tmp_path / "old" / "users.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"version": 1, "users": {"old": {"password": hash_password("x" * 12),
                                                                 "created_at": ""}}}))
    assert UserFile(path).role("old") == "it" and UserFile(path).role("missing") is None
