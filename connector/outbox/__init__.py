"""The durable outbox in the state database: what must reach the registry, until it has.

* :class:`Outbox` (``Outbox(store)``): ``enqueue(kind, key, destination, payload=, files=, after=)``
  (idempotent on (kind, key, destination); False when it already existed), ``lease``, outcomes.
* :func:`outbox_counts` (``outbox_counts(store) -> dict``) for ``status``.
* :func:`backoff_delay` / :func:`parse_retry_after`: retry timing (5 s to 30 min, with jitter).
"""

from connector.outbox.backoff import backoff_delay, parse_retry_after
from connector.outbox.counts import outbox_counts
from connector.outbox.queue import Item, Job, JobRef, Outbox
from connector.outbox.schema import DONE, FAILED, LEASED, PENDING, create_schema

__all__ = ["DONE", "FAILED", "LEASED", "PENDING", "Item", "Job", "JobRef", "Outbox", "backoff_delay",
           "create_schema", "outbox_counts", "parse_retry_after"]
