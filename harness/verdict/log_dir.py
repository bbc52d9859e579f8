"""A test's log directory: one run at a time in it, an earlier run's files cleared before
a run, and room enough for the logs checked before anything boots."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from harness.boot.machine import LogFile
from harness.errors import HarnessError, LogDirBusy
from harness.verdict.record import RESULT_FILE, TIMELINE_FILE

CONSOLE_FILE = "console.log"
JOURNAL_EXPORT = "journal.export"  # the guest's journal as its port carried it
HOST_TEST_LOG = "host-test.log"  # pytest's output of a host-driven test
CORE_FILES = (CONSOLE_FILE, JOURNAL_EXPORT, "journal.journal", HOST_TEST_LOG, TIMELINE_FILE, RESULT_FILE)
LOCK_FILE = ".lock"
MIN_LOG_SPACE = 16 * 2**20  # bytes: a failing test's console log and journal fit, mostly


@contextlib.contextmanager
def owning_log_dir(log_dir: Path, name: str) -> Iterator[None]:
    """One run of a test at a time in its log directory: a second `meson test` on the same
    build directory would delete the first run's logs while its VM writes them and put
    its own verdict in their place. The second run stops at once instead (LogDirBusy),
    touching nothing; the lock is the kernel's, so it goes with the process, however it
    ends, and the file left behind binds nobody."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise LogDirBusy(
                f"{name} is already running with its logs in {log_dir} (process {holder}); "
                "this run would overwrite them, so it did not start",
                "wait for the other run, or run this one from a build directory of its own "
                "(meson setup build2 ...)",
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def clear_logs(log_dir: Path, backend_files: Iterable[LogFile]) -> None:
    """An earlier run's logs must not pass for this run's: the core's files, and those
    the backend says its machines write."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in (*CORE_FILES, *(f.name for f in backend_files)):
        (log_dir / name).unlink(missing_ok=True)
    for kept in log_dir.glob("console.crash-*.log"):
        kept.unlink()


def check_log_space(log_dir: Path) -> None:
    """A full disk under the log directory would lose the logs half-way, and the verdict
    with them: better not to start."""
    st = os.statvfs(log_dir)
    free = st.f_bavail * st.f_frsize
    if free < MIN_LOG_SPACE:
        raise HarnessError(
            f"only {free // 2**20} MB free for the logs in {log_dir} (a run needs "
            f"{MIN_LOG_SPACE // 2**20} MB at least)",
            "free space on that file system, or give the build directory another disk",
        )
