"""Group commit of received instances: one transaction, and one WAL fsync, for all that are waiting.

Why: every instance row must be committed (``synchronous=FULL``) before its C-STORE is answered,
and each commit costs a WAL fsync. With several associations arriving at once, one transaction per
instance makes them queue on SQLite's write lock, whose busy handler sleeps 1, 2, 5 ms and more
between tries. Here one thread commits whatever has queued up while the previous commit was on
disk: a lone association pays one short hand-off, busy ones share the fsync.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from connector.store.state import InstanceRecord, StateStore, StoreOutcome

_MAX_BATCH = 64


class GroupCommitter:
    """Commits :class:`InstanceRecord` rows on behalf of many threads. Thread-safe."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[InstanceRecord, Future[StoreOutcome]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def record(self, rec: InstanceRecord) -> StoreOutcome:
        """Commit ``rec`` (with whatever else is waiting); returns once it is durable, or raises."""
        done: Future[StoreOutcome] = Future()
        self._queue.put((rec, done))
        return done.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                outcomes = self.store.record_instances([rec for rec, _ in batch])
            except Exception:  # nothing was committed; one at a time, so a bad row fails alone
                self._one_by_one(batch)
                continue
            for (_, done), outcome in zip(batch, outcomes):
                done.set_result(outcome)

    def _one_by_one(self, batch: list[tuple[InstanceRecord, Future[StoreOutcome]]]) -> None:
        for rec, done in batch:
            try:
                done.set_result(self.store.record_instance(rec))
            except Exception as exc:  # the sender gets "out of resources" and retries
                done.set_exception(exc)
