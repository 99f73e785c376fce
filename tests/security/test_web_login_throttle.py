"""Issue 24, row 5: sign-in throttling that cannot lock everyone out.

Wrong passwords slow down only the (user name, source address) pair that typed them, with a delay
that doubles at each failure; another user at the same address (everyone, behind a proxy) and the
same user elsewhere sign in at once. Log lines name the user and the source. Real dashboard over
real HTTP; "another address" is a real second loopback address (127.0.0.2), and behind the trusted
proxy the client addresses come in X-Forwarded-For.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connector.web.auth import CHECK_SECONDS, FORGET_SECONDS, LoginThrottle
from tests.security.web_support import COORD, COORD_PASSWORD, PASSWORD, USER, dashboard
from tests.web.conftest import WebSite, csrf_of

BASE = 0.05  # [http] login_delay_seconds in these tests: the doubling is seen within seconds
ATTEMPTS = 50


@pytest.fixture
def site(tmp_path: Path) -> Iterator[WebSite]:
    with dashboard(tmp_path, login_delay_seconds=str(BASE), login_max_delay_seconds="60") as running:
        yield running


def _guess(url: str, n: int, pace: float, headers: dict[str, str] | None = None,
           progress: threading.Event | None = None) -> list[tuple[float, int, str | None]]:
    """``n`` wrong passwords for USER: (time sent, status, Retry-After) of each."""
    c = httpx.Client(base_url=url, timeout=10, headers=headers)
    token = csrf_of(c.get("/login").text)
    out = []
    for i in range(n):
        sent = time.monotonic()
        r = c.post("/login", data={"csrf": token, "username": USER, "password": f"wrong guess {i}"})
        out.append((sent, r.status_code, r.headers.get("Retry-After")))
        if progress is not None and i == 9:
            progress.set()
        time.sleep(pace)
    return out


def _sign_in(url: str, user: str, password: str, *, local: str | None = None,
             headers: dict[str, str] | None = None) -> int:
    transport = httpx.HTTPTransport(local_address=local) if local else None
    c = httpx.Client(base_url=url, timeout=10, headers=headers, transport=transport)
    form = c.get("/login")
    return c.post("/login", data={"csrf": csrf_of(form.text), "username": user, "password": password}).status_code


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def test_fifty_wrong_passwords_slow_down_only_that_name_from_that_address(
        site: WebSite, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connector.web.app")
    results: list[tuple[float, int, str | None]] = []
    ten_sent = threading.Event()
    attacker = threading.Thread(target=lambda: results.extend(_guess(site.url, ATTEMPTS, 0.06, progress=ten_sent)))
    attacker.start()
    try:
        assert ten_sent.wait(30)
        # while the guessing goes on: another user at the same address, and the guessed user elsewhere
        assert _sign_in(site.url, COORD, COORD_PASSWORD) == 303
        assert _sign_in(site.url, USER, PASSWORD, local="127.0.0.2") == 303
        assert attacker.is_alive(), "the sign-ins were meant to happen during the guessing"
    finally:
        attacker.join(60)

    statuses = [s for _, s, _ in results]
    assert len(statuses) == ATTEMPTS and set(statuses) <= {401, 429}
    checked = [t for t, s, _ in results if s == 401]
    assert 5 <= len(checked) <= 10, statuses  # 50 guesses over ~3 s: only a handful were even checked
    assert all(after is not None and int(after) >= 1 for _, s, after in results if s == 429)

    failed = [r for r in _events(caplog, "login_failed") if r.source == "127.0.0.1"]
    assert [r.user for r in failed] == [USER] * len(checked)
    assert [r.failures for r in failed] == list(range(1, len(checked) + 1))
    delays = [r.next_attempt_in_s for r in failed]
    assert delays == [round(BASE * 2 ** k, 3) for k in range(len(checked))]  # doubling at each failure
    for k in range(len(checked) - 1):  # and enforced: no guess was checked before its wait was over
        assert checked[k + 1] - checked[k] >= delays[k]
    throttled = _events(caplog, "login_throttled")
    assert len(throttled) == ATTEMPTS - len(checked)
    assert {(r.user, r.source) for r in throttled} == {(USER, "127.0.0.1")}
    signed_in = {(r.user, r.source) for r in _events(caplog, "login")}
    assert signed_in == {(COORD, "127.0.0.1"), (USER, "127.0.0.2")}


def test_behind_the_trusted_proxy_each_client_address_counts_alone(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="connector.web.app")
    with dashboard(tmp_path, trusted_proxies='["127.0.0.1"]', login_delay_seconds="5") as site:
        guesser = {"X-Forwarded-For": "10.0.0.66"}
        results = _guess(site.url, ATTEMPTS, 0.0, headers=guesser)
        assert [s for _, s, _ in results].count(401) == 1  # the first; the rest waited
        # every browser reaches the dashboard through the proxy (127.0.0.1); none of them is locked out
        assert _sign_in(site.url, COORD, COORD_PASSWORD, headers=guesser) == 303  # another user, same client
        assert _sign_in(site.url, USER, PASSWORD, headers={"X-Forwarded-For": "10.0.0.7"}) == 303  # the same user
        assert _sign_in(site.url, USER, PASSWORD, headers=guesser) == 429  # only the guessing pair waits
    [failed] = _events(caplog, "login_failed")
    assert (failed.user, failed.source, failed.next_attempt_in_s) == (USER, "10.0.0.66", 5.0)
    assert {(r.user, r.source) for r in _events(caplog, "login")} == {(COORD, "10.0.0.66"), (USER, "10.0.0.7")}


def test_names_that_are_not_users_are_not_logged(site: WebSite, caplog: pytest.LogCaptureFixture) -> None:
    """A password typed into the name field must not end up in the log."""
    caplog.set_level(logging.INFO, logger="connector.web.app")
    assert _sign_in(site.url, "Tr0ub4dor&3-typed-as-name", "whatever it is") == 401
    [failed] = _events(caplog, "login_failed")
    assert failed.user == "(not a user)" and failed.source == "127.0.0.1"
    assert "Tr0ub4dor" not in caplog.text


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_doubles_caps_forgets_and_holds_parallel_attempts() -> None:
    clock = _Clock()
    throttle = LoginThrottle(1.0, 60.0, max_pairs=100, clock=clock)
    waits = []
    for _ in range(9):
        assert throttle.attempt("Alice", "10.0.0.1") == 0.0
        waits.append(throttle.failed("alice", "10.0.0.1")[1])  # names are matched without case
        assert throttle.attempt("alice", "10.0.0.1") == pytest.approx(waits[-1])
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert throttle.attempt("alice", "10.0.0.2") == 0.0 and throttle.attempt("bob", "10.0.0.1") == 0.0

    # while one attempt of a pair is being checked, a parallel one is refused
    assert throttle.attempt("carol", "10.0.0.3") == 0.0
    assert throttle.attempt("carol", "10.0.0.3") > 0
    throttle.succeeded("carol", "10.0.0.3")
    assert throttle.attempt("carol", "10.0.0.3") == 0.0
    throttle.release("carol", "10.0.0.3")
    assert throttle.attempt("dave", "10.0.0.4") == 0.0  # and its request dies before it reports back:
    clock.now += CHECK_SECONDS + 1
    assert throttle.attempt("dave", "10.0.0.4") == 0.0  # that pair is not held for ever

    # a success, or a day without failures, forgets the pair
    assert throttle.attempt("alice", "10.0.0.1") == 0.0
    clock.now += FORGET_SECONDS + 1
    assert throttle.failed("alice", "10.0.0.1") == (1, 1.0)

    # a spray of names keeps memory bounded
    for i in range(1000):
        if throttle.attempt(f"user{i}", "10.0.0.9") == 0.0:
            throttle.failed(f"user{i}", "10.0.0.9")
    assert len(throttle._pairs) <= 100
