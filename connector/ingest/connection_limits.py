"""The receiver's capacity, and who may hold it: pending connections, associations, the ARTIM timer.

Why (issue 24): a TCP connection used to take one of ``max_associations`` from the moment it was
accepted, before its caller was known, with one thread each; a host that is not even allowed could
hold every place with idle connections and lock the PACS out. Now:

- A connection is *pending* from accept until its A-ASSOCIATE-RQ has passed the allow-lists; only
  then does it take an association place (:meth:`ConnectionLimits.associate`). A pending connection
  never holds an association place, so allowed callers keep all of ``max_associations``.
- Pending connections are capped per receiver process, in total and per source address (an IPv6
  caller per /64, which one host can fill with addresses); a connection over a cap is closed at
  once, before a thread is spent on it. When ``allowed_hosts`` is set, addresses not on it may hold
  at most half the pending places, so many hostile sources cannot crowd out the PACS either.
- ARTIM (PS3.8 section 9.1.5): a pending connection that has not completed its TLS handshake and
  A-ASSOCIATE-RQ within ``artim_timeout`` is shut down by one watchdog thread. A deadline for the
  whole request, not a per-read timeout: a caller trickling a byte at a time cannot stretch it.

Refusals and expiries are logged at most once a minute per source, with a count, so a flood does
not become a flood of log lines.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LOG_EVERY = 60.0  # seconds between two log lines about the same source and event
_LOG_SOURCES = 4096  # sources remembered for that; beyond, the memory is cleared (a flood of sources)


@dataclass(frozen=True)
class Limits:
    max_associations: int
    max_pending: int
    max_pending_per_host: int
    artim_timeout: float

    @property
    def max_connections(self) -> int:
        """Connections served at once, pending and associated: the worker threads needed."""
        return self.max_associations + self.max_pending


def source_key(address: str) -> str:
    """The unit a per-host cap counts: the IPv4 address, or the IPv6 /64 (one host can own all of it)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Ticket:
    """One accepted connection's claim on the receiver: pending until it is associated."""

    __slots__ = ("source", "known", "deadline", "associated", "expired", "released", "_watch")

    def __init__(self, source: str, known: bool, deadline: float, watch: socket.socket) -> None:
        self.source = source
        self.known = known
        self.deadline = deadline
        self.associated = False
        self.expired = False  # the ARTIM timer ran out and the connection was shut down
        self.released = False
        self._watch: socket.socket | None = watch  # a duplicate of the connection, to shut it from another thread

    # Both run with the limits' lock held: a watch closed by one thread while another shuts it down
    # could otherwise see its descriptor number reused by a new connection, and shut that one.
    def _shut(self) -> None:
        if self._watch is not None:
            try:
                self._watch.shutdown(socket.SHUT_RDWR)  # wakes the worker blocked reading the connection
            except OSError:
                pass

    def _drop_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None


class ConnectionLimits:
    """Counts pending and associated connections against :class:`Limits`; runs the ARTIM watchdog.

    ``is_known(address)`` says whether an address is on ``allowed_hosts``; None when that list is
    empty (every caller is then treated alike).
    """

    def __init__(self, limits: Limits, is_known: Callable[[str], bool] | None = None) -> None:
        self.limits = limits
        self._is_known = is_known
        self._lock = threading.Lock()
        self._pending: set[Ticket] = set()
        self._per_source: Counter[str] = Counter()
        self._strangers = 0
        self._associated = 0
        self._noted: dict[tuple[str, str], tuple[float, int]] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def associated(self) -> int:
        with self._lock:
            return self._associated

    # -- the connection's life ---------------------------------------------------------------------

    def open(self, sock: socket.socket, address: str) -> Ticket | None:
        """A pending place for a just-accepted connection, or None: the caller closes it."""
        source = source_key(address)
        known = self._is_known is None or self._is_known(address)
        limits = self.limits
        with self._lock:
            refused = self._over_limit(source, known)
            if not refused:
                try:
                    watch = sock.dup()
                except OSError:  # out of file descriptors: refusing is the only safe answer
                    refused = "file_descriptors"
                else:
                    ticket = Ticket(source, known, time.monotonic() + limits.artim_timeout, watch)
                    self._pending.add(ticket)
                    self._per_source[source] += 1
                    self._strangers += not known
                    return ticket
        self._note("connection_refused", source, "connection closed at once: too many pending connections",
                   limit=refused)
        return None

    def _over_limit(self, source: str, known: bool) -> str:  # with the lock held
        """Which cap a new pending connection from ``source`` would break ("" for none)."""
        limits = self.limits
        if self._per_source[source] >= limits.max_pending_per_host:
            return "per_host"
        if len(self._pending) >= limits.max_pending:
            return "pending"
        if not known and self._strangers >= max(1, limits.max_pending // 2):
            return "not_allowed_hosts"
        return ""

    def associate(self, ticket: Ticket) -> bool:
        """Move ``ticket`` from pending to an association place; False when every place is taken."""
        with self._lock:
            if ticket.released or ticket.expired or ticket.associated:
                return ticket.associated
            if self._associated >= self.limits.max_associations:
                return False
            self._unpend(ticket)
            ticket.associated = True
            self._associated += 1
            ticket._drop_watch()  # the ARTIM timer stops here: network_timeout guards the association
        return True

    def release(self, ticket: Ticket) -> None:
        """The connection ended: free its place (idempotent)."""
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            if ticket.associated:
                self._associated -= 1
            else:
                self._unpend(ticket)
            ticket._drop_watch()

    def _unpend(self, ticket: Ticket) -> None:  # with the lock held
        if ticket in self._pending:
            self._pending.discard(ticket)
            self._per_source[ticket.source] -= 1
            if not self._per_source[ticket.source]:
                del self._per_source[ticket.source]
            self._strangers -= not ticket.known

    # -- ARTIM ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="scp-artim", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)
            self._watchdog = None

    def drop_pending(self) -> None:
        """Shut every pending connection now (the receiver is stopping; they have nothing to lose)."""
        with self._lock:
            for ticket in self._pending:
                ticket._shut()

    def _watch(self) -> None:
        tick = min(0.25, max(0.02, self.limits.artim_timeout / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [t for t in self._pending if not t.expired and t.deadline <= now]
                for ticket in late:
                    ticket.expired = True
                    ticket._shut()
            for ticket in late:
                self._note("artim_expired", ticket.source,
                           "connection closed: no A-ASSOCIATE-RQ within the ARTIM timeout",
                           seconds=self.limits.artim_timeout)

    # -- logging -------------------------------------------------------------------------------

    def _note(self, event: str, source: str, message: str, **extra: object) -> None:
        """Log ``event`` for ``source`` at most once per minute, counting the ones in between."""
        now = time.monotonic()
        key = (event, source)
        with self._lock:
            last, count = self._noted.get(key, (0.0, 0))
            if last and now - last < _LOG_EVERY:
                self._noted[key] = (last, count + 1)
                return
            if len(self._noted) >= _LOG_SOURCES:
                self._noted.clear()
            self._noted[key] = (now, 0)
        log.warning(message, extra={"event": event, "peer": source, "since_last_line": count, **extra})
