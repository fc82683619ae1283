"""One run per folder: an exclusive lock on ``.lock`` in the run folder, held for the whole run.

The lock is ``fcntl.flock`` on an open file: the kernel releases it when the holding process ends, however it ends
(exit, crash, SIGKILL), so a lock left by a dead process is never obeyed; the file itself stays, holding the last
holder's pid for the message a second run prints. Where ``fcntl`` does not exist (Windows) runs are not locked.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from dropbp.core.errors import ConfigError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.lock`` exclusively, or raises :class:`ConfigError` naming the pid
    of the run that holds it. The folder is created when missing, and removed again on release when this lock
    created it and nothing but the lock file was written there (a run that failed before it started)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._file: BinaryIO | None = None  # a file object, so a lock never released is freed with it
        self._created = False

    def acquire(self) -> None:
        """Take the lock (non-blocking)."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            raise ConfigError(f"--output-dir {self.folder}: cannot open its lock file {self.path} ({err.strerror}); "
                              "it must be a regular file this user can write.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"--output-dir {self.folder} is in use by another dropbp run (pid {holder}); wait "
                              "for it to end, or choose another folder.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._file = os.fdopen(fd, "r+b")

    def release(self) -> None:
        """Let the lock go (and remove a folder this lock created that holds nothing else)."""
        if self._file is None:
            return
        self._file.close()  # closing the descriptor releases the flock
        self._file = None
        if self._created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)
            self.folder.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
