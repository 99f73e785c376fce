"""Empty files created ahead of need by a background thread, for receivers on a hot path.

Why: creating a file can take most of a millisecond while the file system is committing its
journal (which every fsync of the previous object triggers); done when an object starts to
arrive it stalls the receiving thread, done here it overlaps with the network. Spares left behind by
a crash are ``.part`` files, removed at the next start with the rest of the partial folder.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path

from connector.store.durable import PART_SUFFIX


class SpareFiles:
    """A small stock of open, empty ``.part`` files in one folder. Thread-safe."""

    def __init__(self, folder: Path, *, keep: int = 4, suffix: str = PART_SUFFIX) -> None:
        self.folder = folder
        self.suffix = suffix
        self._queue: queue.Queue[tuple[Path, int]] = queue.Queue(maxsize=keep)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="spare-files", daemon=True)
        self._thread.start()

    def _create(self) -> tuple[Path, int]:
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=self.suffix)
        return Path(name), fd

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                spare = self._create()
            except OSError:  # folder gone or disk full: the taker creates (and reports) its own
                self._stop.wait(1.0)
                continue
            while not self._stop.is_set():
                try:
                    self._queue.put(spare, timeout=0.1)
                    break
                except queue.Full:
                    continue
            else:
                _discard(spare)

    def take(self) -> tuple[Path, int]:
        """An open empty file (path, fd) that the caller now owns; raises OSError if none can be made."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return self._create()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        while True:
            try:
                _discard(self._queue.get_nowait())
            except queue.Empty:
                return


def _discard(spare: tuple[Path, int]) -> None:
    os.close(spare[1])
    spare[0].unlink(missing_ok=True)
