"""A fixed ceiling of reusable daemon threads for the receiver's connections.

Why not one thread per connection: each TCP connection would then cost a thread before anything
is known about the caller, so a port scanner or a flood of idle connections could make the
receiver start thousands. Why not :class:`concurrent.futures.ThreadPoolExecutor`: its workers are
joined at interpreter exit, so one connection still blocked in a read would hold the process up;
a receiver's threads must never outlive a stop.

The caller admits no more tasks than ``size`` at once (:mod:`connector.ingest.connection_limits`
counts them), so the queue never grows beyond a task waiting the moment a worker takes to come
back from the previous one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Task = Callable[[], None]


class WorkerPool:
    """Runs tasks on at most ``size`` daemon threads, started on demand and reused."""

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self.name = name
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one permit per worker waiting for a task
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def threads(self) -> int:
        """Worker threads started so far (never more than ``size``)."""
        with self._lock:
            return len(self._threads)

    def submit(self, task: Task) -> None:
        """Run ``task`` on an idle worker, or on a new one while fewer than ``size`` exist.

        Raises RuntimeError after :meth:`close` or when the system cannot start a thread.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool closed")
        self._tasks.put(task)
        if self._idle.acquire(blocking=False):
            return  # an idle worker takes it
        with self._lock:
            if len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        """Let every worker end once the tasks already queued have run; no new task is taken."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._tasks.put(None)

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except Exception as exc:  # a bug in a task must not take its worker down with it
                log.error("connection task failed", extra={"event": "worker_task_failed",
                                                          "error": type(exc).__name__})
            finally:
                self._idle.release()
