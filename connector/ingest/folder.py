"""Drop-folder intake: files copied into a watched folder are ingested like C-STORE objects.

A file is taken only once its size and modification time have not changed for
``settle_seconds`` (copies over SMB or USB arrive in pieces). watchdog reports changes promptly;
a periodic rescan catches anything it missed (network file systems often send no events) and
files that were there before the daemon started. The source file is deleted only after the
instance is committed; unreadable files are moved to quarantine with a reason. Hidden files and
names ending in ``.part``/``.tmp`` are treated as still being written. Symbolic links are never
followed nor deleted (one could point at any file the service can read, or make it delete one
outside the folder): they are left where they are, with one warning each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from connector.ingest.intake import DiskFull, Intake, UnreadableObject
from connector.store.quarantine import quarantine

log = logging.getLogger(__name__)

_IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial")


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower().endswith(_IGNORED_SUFFIXES)


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: DropFolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self.watcher.notice(Path(str(target)))


class DropFolderWatcher:
    def __init__(self, folder: Path, intake: Intake, *, settle_seconds: float = 2.0, poll_seconds: float = 1.0) -> None:
        self.folder = folder
        self.intake = intake
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, stable since)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._thread: threading.Thread | None = None
        self.ingested = 0
        self.quarantined = 0
        self._links_seen: set[Path] = set()

    def _is_plain_file_inside(self, path: Path) -> bool:
        """A regular file reached without any symbolic link, inside the folder (lstat, no following)."""
        try:
            rel = path.relative_to(self.folder)
        except ValueError:
            return False
        current = self.folder
        for part in rel.parts:
            current = current / part
            try:
                st = os.lstat(current)
            except OSError:
                return False
            if (st.st_mode & 0o170000) == 0o120000:  # S_IFLNK
                if path not in self._links_seen:
                    self._links_seen.add(path)
                    log.warning("drop folder: symbolic link ignored (never followed nor deleted)",
                                extra={"event": "dropfolder_symlink_ignored"})
                return False
        return (st.st_mode & 0o170000) == 0o100000  # S_IFREG

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(_Events(self), str(self.folder), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._thread = threading.Thread(target=self._loop, name="dropfolder", daemon=True)
        self._thread.start()
        log.info("drop folder watched", extra={"event": "dropfolder_started"})

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def notice(self, path: Path) -> None:
        if _ignored(path):
            return
        with self._lock:
            self._seen[path] = (-1, -1, 0.0)  # any event restarts the settle timer

    def _loop(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_scan >= max(self.poll_seconds * 5, 5.0) or last_scan == 0.0:
                self._rescan()
                last_scan = now
            self.process_ready()
            self._stop.wait(self.poll_seconds)

    def _rescan(self) -> None:
        for path in self.folder.rglob("*"):
            if not _ignored(path) and self._is_plain_file_inside(path):
                with self._lock:
                    self._seen.setdefault(path, (-1, -1, 0.0))

    def process_ready(self, now: float | None = None) -> int:
        """Ingest every file whose size has been stable long enough. Returns files handled."""
        now = time.monotonic() if now is None else now
        ready: list[Path] = []
        with self._lock:
            for path, (size, mtime, since) in list(self._seen.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._seen[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._seen[path] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self.settle_seconds:
                    ready.append(path)
        handled = 0
        for path in ready:
            if self._stop.is_set() and handled:
                break
            if not self._is_plain_file_inside(path):  # replaced by a link (or a folder) meanwhile
                with self._lock:
                    self._seen.pop(path, None)
                continue
            if self._ingest(path):
                handled += 1
                with self._lock:
                    self._seen.pop(path, None)
        return handled

    def _ingest(self, path: Path) -> bool:
        try:
            self.intake.ingest_external(path, source="folder")
        except DiskFull:
            log.error("spool disk below free-space floor; drop folder paused", extra={"event": "disk_low"})
            return False
        except UnreadableObject as exc:
            entry = quarantine(self.intake.layout.quarantine, "ingest", exc.code, source_path=path, move=True,
                               details={"source": "folder", "detail": exc.detail})
            self.quarantined += 1
            log.warning("drop-folder file quarantined", extra={"event": "quarantined", "stage": "ingest",
                                                               "reason": exc.code, "entry": entry.id})
            return True
        except FileNotFoundError:
            return True  # removed by someone else meanwhile
        except Exception as exc:
            log.error("drop-folder file could not be ingested; will retry",
                      extra={"event": "dropfolder_retry", "error": type(exc).__name__})
            return False
        path.unlink(missing_ok=True)
        self.ingested += 1
        return True
