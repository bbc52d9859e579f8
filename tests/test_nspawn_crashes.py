"""The host's watch over a container's core dumps, without a kernel: the process events it
reads (forks, execs, core-dumping signals, exits) fed in by hand, and what it adds to the
journal export the gate reads."""

import struct
from pathlib import Path

from harness.backends.nspawn import crashes
from harness.backends.nspawn.crashes import COREDUMP, EXEC, EXIT, FORK, Crash, CrashWatch, add_to_export
from harness.verdict.gates import core_dumps
from harness.verdict.journal import COREDUMP_MESSAGE_ID, read_export


def event(what: int, *data: int) -> bytes:
    head = crashes.HEADER.pack(0, 0, 0, 0, 0) + crashes.CN_MSG.pack(1, 1, 0, 0, 0, 0)
    # The kernel sends the whole union of event data, whichever event it is: 32 bytes here.
    return head + crashes.EVENT.pack(what, 0, 0) + struct.pack(f"={len(data)}i", *data).ljust(32, b"\0")


def fork(parent: int, child: int, thread: bool = False) -> bytes:
    return event(FORK, parent, parent, child, parent if thread else child)


def exit_(pid: int, status: int) -> bytes:
    return event(EXIT, pid, pid, status, 17, 1, 1)


def watch(monkeypatch) -> CrashWatch:
    monkeypatch.setattr(crashes, "process_facts", lambda tgid: ("", "", tgid))  # gone already
    return CrashWatch()


def test_a_core_dump_below_the_containers_first_process_is_a_crash(monkeypatch):
    w = watch(monkeypatch)
    w._event(fork(100, 101))  # before the watch knows its root: kept for it
    w.watch_below(100)
    for e in (fork(101, 102), fork(7, 8), event(COREDUMP, 102, 102, 101, 101), exit_(102, 11)):
        w._event(e)
    w._event(event(COREDUMP, 8, 8, 7, 7))  # another process of the host's
    assert w.crashes == [Crash(102, "?", "", 11)]


def test_a_thread_is_no_process_and_what_exec_saw_names_the_crash(monkeypatch):
    w = watch(monkeypatch)
    w.watch_below(100)
    w._event(fork(100, 101))
    monkeypatch.setattr(crashes, "process_facts", lambda tgid: ("sleep", "/usr/bin/sleep", 5))
    w._event(event(EXEC, 101, 101))
    monkeypatch.setattr(crashes, "process_facts", lambda tgid: ("", "", tgid))
    w._event(fork(101, 103, thread=True))
    w._event(event(COREDUMP, 103, 103, 100, 100))  # the thread's own number: not a process of ours
    w._event(event(COREDUMP, 101, 101, 100, 100))
    assert list(w._dumping.values()) == [Crash(5, "sleep", "/usr/bin/sleep", None)]


def test_a_pid_used_again_by_the_host_is_not_the_containers(monkeypatch):
    w = watch(monkeypatch)
    w.watch_below(100)
    w._event(fork(100, 102))
    w._event(exit_(102, 0))
    w._event(fork(7, 102))  # the host's now
    w._event(event(COREDUMP, 102, 102, 7, 7))
    assert w._dumping == {} and w.crashes == []


def test_the_hosts_sighting_reads_as_systemd_coredumps_entry(tmp_path):
    export = tmp_path / "journal.export"
    export.write_bytes(b"MESSAGE=hello\n\n")
    add_to_export(export, [Crash(53, "sleep", "/run/root/usr/bin/sleep", 11)], Path("/run/root"))
    (dump,) = core_dumps(export.read_bytes())
    assert dump == "sleep (pid 53, SIGSEGV, /usr/bin/sleep)"
    assert core_dumps(export.read_bytes(), exclude="/sleep$") == []
    entry = read_export(export.read_bytes())[1]
    assert len(entry["_BOOT_ID"]) == 32 and entry["__MONOTONIC_TIMESTAMP"].isdigit()


def test_an_export_cut_short_keeps_the_hosts_entries_apart(tmp_path):
    export = tmp_path / "journal.export"
    export.write_bytes(b"MESSAGE=hello\nMESSAGE_ID=cut")
    add_to_export(export, [Crash(53, "sleep", "/usr/bin/sleep\nodd", 11)], Path("/"))
    (dump,) = core_dumps(export.read_bytes())
    assert dump.startswith("sleep (pid 53, SIGSEGV, /usr/bin/sleep\nodd)")


def test_the_guests_own_core_dumps_are_not_doubled(tmp_path):
    export = tmp_path / "journal.export"
    guest = f"MESSAGE_ID={COREDUMP_MESSAGE_ID}\nCOREDUMP_PID=53\nCOREDUMP_COMM=sleep\n\n"
    export.write_bytes(guest.encode())
    add_to_export(
        export, [Crash(53, "sleep", "/usr/bin/sleep", 11), Crash(54, "cat", "/usr/bin/cat", 6)], Path("/")
    )
    assert [d.split(" (")[0] for d in core_dumps(export.read_bytes())] == ["sleep", "cat"]
