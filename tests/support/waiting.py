"""Polling helpers shared by the tests that wait for a daemon, a registry or a file to catch up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Like :func:`wait_for`, but answers False instead of failing (for tests that assert the outcome)."""
    try:
        wait_for(predicate, timeout, 0.02)
    except AssertionError:
        return False
    return True
