"""What an operator sees: echo explains a rejection and defaults to an allowed calling AE title;
every command stops quietly when its output pipe is closed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.support import TEST_STOP_TIMEOUT, stop_timed
from tests.support.daemon import ROOT, ConnectorProcess

pytestmark = pytest.mark.slow


def test_echo_defaults_to_an_allowed_calling_ae_and_explains_a_refused_one(tmp_path: Path) -> None:
    with ConnectorProcess(tmp_path / "site", dicom__allowed_ae_titles=["HOSPITALPACS", "OTHER"],
                          service__stop_timeout=TEST_STOP_TIMEOUT) as daemon:
        assert "DICOM receiver listening" in daemon.wait_for_log("DICOM receiver listening", timeout=90)
        ok = daemon.cli("echo")  # the README's "Verify" step, after allowed_ae_titles was set
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "from HOSPITALPACS: success" in ok.stdout
        refused = daemon.cli("echo", "--calling-aet", "ECHOSCU")
        assert refused.returncode == 3
        assert "calling AE title 'ECHOSCU' refused" in refused.stdout
        assert "[dicom] allowed_ae_titles (HOSPITALPACS, OTHER)" in refused.stdout
        assert "--calling-aet" in refused.stdout
        assert "Traceback" not in refused.stderr
        stop_timed(daemon)


def test_echo_explains_a_refused_address(tmp_path: Path) -> None:
    with ConnectorProcess(tmp_path / "site", dicom__allowed_hosts=["10.99.0.0/16"],
                          service__stop_timeout=TEST_STOP_TIMEOUT) as daemon:
        # The port is bound by the supervisor before a receiver accepts on it; on a loaded machine
        # the receiver can take longer than echo's 10 s to start, which would be "no answer". Both
        # receiver processes (the default two share the port) must be listening: the kernel may hand
        # the connection to either. Once did a 30 s echo get no answer on a loaded CI machine.
        deadline = time.monotonic() + 90
        while daemon.logs().count("DICOM receiver listening") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.logs().count("DICOM receiver listening") >= 2, daemon.logs()[-2000:]
        refused = daemon.cli("echo", "--json", "--timeout", "60")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        import json

        out = json.loads(refused.stdout)
        assert "reject" in out, out
        assert out["reject"] == {"result": 1, "source": 1, "reason": 1}
        assert "address refused" in out["explanation"] and "[dicom] allowed_hosts (10.99.0.0/16)" in out["explanation"]
        stop_timed(daemon)


def test_echo_with_nothing_listening_says_so(tmp_path: Path) -> None:
    daemon = ConnectorProcess(tmp_path / "site")
    r = daemon.cli("echo", "--timeout", "2")
    assert r.returncode == 3
    assert "nothing answered" in r.stdout and "daemon running" in r.stdout


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["--help"], ["users", "list"],
                                  ["rules", "explain", "PatientName"]])
def test_closed_output_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """``site-connector status | head -1``: the reader is gone before the command writes."""
    from connector.site_db import open_state

    daemon = ConnectorProcess(tmp_path / "site")  # a configured site, with a state database
    open_state(daemon.data_dir / "state" / "state.db").close()
    proc = subprocess.Popen([sys.executable, "-m", "connector", "-c", str(tmp_path / "site" / "connector.toml"),
                             *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head -1` having exited already
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    # 141 as for a tool ended by SIGPIPE; argparse's --help swallows the write error itself (exit 0)
    assert code == (0 if args == ["--help"] else 141), (code, err)
