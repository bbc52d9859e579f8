"""The start of every boot put back in console.log (harness/backends/qemu/early_console.py):
what the UART saw before hvc0 came up, boot by boot, in front of each boot's first line
on hvc0; a boot that never reached hvc0 at the end, under a note."""

from harness.backends.qemu.early_console import boots, merge_early_console, merged

UART_BOOT_1 = (
    b"[    0.000000] Linux version 6.12.1 (debian-kernel@lists.debian.org)\r\n"
    b"[    0.000000] Command line: root=PARTUUID=x console=ttyS0 console=hvc0\r\n"
    b"[    1.200000] virtio_blk virtio1: [vda] 2097152 512-byte logical blocks\r\n"
    b"[    3.511827] rtc_cmos 00:02: registered as rtc0\r\n"
    b"[    3.600000] Run /init as init process\r\n"
)
HVC_BOOT_1 = (
    b"[    3.511827] rtc_cmos 00:02: registered as rtc0\n"
    b"[    3.600000] Run /init as init process\n"
    b"Welcome to Debian GNU/Linux 13 (trixie)!\n"
    b"test.sh[400]: + reboot\n"
)
UART_BOOT_2 = (
    b"[    0.000000] Linux version 6.12.1 (debian-kernel@lists.debian.org)\r\n"
    b"[    2.000000] early trouble in boot 2\r\n"
    b"[    3.400000] rtc_cmos 00:02: registered as rtc0\r\n"
)
HVC_BOOT_2 = b"[    3.400000] rtc_cmos 00:02: registered as rtc0\nWelcome back\n"


def test_each_boots_early_lines_go_in_front_of_its_first_line_on_the_console():
    out = merged(HVC_BOOT_1 + HVC_BOOT_2, UART_BOOT_1 + UART_BOOT_2)
    lines = out.decode().splitlines()
    assert lines[0].endswith("Linux version 6.12.1 (debian-kernel@lists.debian.org)")
    assert lines[3] == "[    3.511827] rtc_cmos 00:02: registered as rtc0"  # hvc0's, once
    assert lines.count("[    3.511827] rtc_cmos 00:02: registered as rtc0") == 1
    second = lines.index("[    3.400000] rtc_cmos 00:02: registered as rtc0")
    assert lines[second - 2].endswith("Linux version 6.12.1 (debian-kernel@lists.debian.org)")
    assert lines[second - 1] == "[    2.000000] early trouble in boot 2"
    assert lines[-1] == "Welcome back" and "harness:" not in out.decode()


def test_a_boot_that_never_reached_the_console_is_kept_at_the_end():
    died = b"[    0.000000] Linux version 6.12.1\r\n[    0.500000] Kernel panic - not syncing: VFS\r\n"
    out = merged(HVC_BOOT_1, UART_BOOT_1 + died).decode()
    assert out.endswith(
        "[harness: what the kernel printed on the UART before the console came up]\n"
        "[    0.000000] Linux version 6.12.1\n[    0.500000] Kernel panic - not syncing: VFS\n"
    )
    assert merged(b"", died).decode().startswith("[harness: what the kernel printed")


def test_boots_are_split_at_the_kernels_first_line():
    assert [len(b) for b in boots(UART_BOOT_1 + UART_BOOT_2)] == [5, 3]
    assert boots(b"noise before any boot\n") == []


def test_the_console_log_is_rewritten_only_when_the_uart_saw_a_boot(tmp_path):
    console, uart = tmp_path / "console.log", tmp_path / "early-console.log"
    console.write_bytes(HVC_BOOT_1)
    merge_early_console(console, uart)  # no UART file: nothing to do
    uart.write_bytes(b"")
    merge_early_console(console, uart)
    assert console.read_bytes() == HVC_BOOT_1
    uart.write_bytes(UART_BOOT_1)
    merge_early_console(console, uart)
    assert console.read_bytes().startswith(b"[    0.000000] Linux version")
    assert not (tmp_path / "console.partial").exists()


def test_a_resumed_vms_reboot_is_not_mistaken_for_the_snapshots_boot():
    snapshot_boot = merged(HVC_BOOT_1, UART_BOOT_1)  # whole, as the snapshot keeps it
    console = snapshot_boot + b"\n[harness: the booted snapshot was saved here; the test resumes it]\n"
    console += b"test.sh: + reboot\n" + HVC_BOOT_1
    lines = merged(console, UART_BOOT_1).decode().splitlines()
    assert lines.count("[    0.000000] Linux version 6.12.1 (debian-kernel@lists.debian.org)") == 2
    reboot = lines.index("test.sh: + reboot")
    assert lines[reboot + 1].endswith("Linux version 6.12.1 (debian-kernel@lists.debian.org)")


def test_a_log_cut_for_a_flood_stays_as_it_was_cut(tmp_path):
    console, uart = tmp_path / "console.log", tmp_path / "early-console.log"
    cut = HVC_BOOT_1 + b"x" * 1000 + b"\n[harness: the log is cut here, at 4 MB; the guest wrote more]\n"
    console.write_bytes(cut)
    uart.write_bytes(UART_BOOT_1)
    merge_early_console(console, uart)
    assert console.read_bytes() == cut
