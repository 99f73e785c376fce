"""SIGTERM/SIGINT handling that cannot hang a process: the handler only records, a pipe wakes the waiter.

Why not ``Event.set()`` (or a log line, or a timer) in the handler: Python runs a signal handler in
the main thread between two bytecodes, which may be while that thread holds a lock, e.g. the
condition lock ``threading.Event.wait`` takes back before it returns, a logging handler's lock, or
the thread table's lock in ``Thread.start``. A handler that needs the same lock then waits on its
own thread for ever: the supervisor stayed up, its roles zombies, until SIGKILL (issue 24, row 11).

So the handler here assigns one attribute, and :func:`signal.set_wakeup_fd` has the interpreter's
C-level handler write the signal number to a pipe (async-signal-safe, whichever thread the kernel
picked). The waiter, the supervisor's main loop or a role's watcher thread, selects on that pipe and
does the real work (logging, setting events, timers) outside any handler.
"""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterable


class StopSignals:
    """The stop signals a process has received; ``install()`` once, from the main thread."""

    def __init__(self, signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signums = frozenset(int(s) for s in signums)
        self._first: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)  # the interpreter requires it (a full pipe must not block)

    def install(self) -> None:
        """Route the signals here. The wakeup pipe is set before the handlers: none can be missed."""
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self.signums:
            signal.signal(signum, self._handler)

    def ignore(self) -> None:
        """Ignore the signals from now on: once the stop is done, a late one must not kill the
        process while the interpreter exits (which restores the default action of Python handlers)."""
        for signum in self.signums:
            signal.signal(signum, signal.SIG_IGN)

    def _handler(self, signum: int, _frame: object) -> None:
        # Only an attribute assignment: no lock, no I/O (see the module docstring).
        if self._first is None:
            self._first = signum

    def received(self) -> int | None:
        """The first stop signal received so far (its number), or None; never waits."""
        while True:
            try:
                data = os.read(self._read_fd, 512)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            for signum in data:  # the pipe says which signal even before the Python handler has run
                if signum in self.signums and self._first is None:
                    self._first = signum
        return self._first

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a stop signal; returns it, or None.

        The handler's flag is looked at too, so a library that took the wakeup fd over (only one
        per process) delays a stop by at most ``timeout``, never loses it.
        """
        if self.received() is not None:
            return self._first
        try:
            select.select([self._read_fd], [], [], timeout)
        except (OSError, ValueError):
            pass
        return self.received()
