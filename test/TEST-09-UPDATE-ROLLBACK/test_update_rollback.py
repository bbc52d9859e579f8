"""An OS update as a device does it, proven across reboots and a power cut, with systemd's
own mechanisms only: systemd-boot's boot counting, boot-complete.target and
systemd-bless-boot. No update system of our own: an update is a new unified kernel image
on the EFI system partition, named with tries left (`os-v2+3.efi`); systemd-boot tries the
newest entry and counts down, the health check decides, and systemd-bless-boot marks a
good boot by dropping the counter.

A version is the image's own UKI with `harness.os-version=N` added to its embedded command
line. The device's application is `os-app.service`; its health check, `os-health.service`,
is ordered before boot-complete.target and reboots the machine when the application is not
up. Version 3 is the broken update: its command line masks the application, as an update
whose application no longer starts. Storage is persistent: the ESP and the root keep what
each boot wrote.

The same file runs on a VM and on a board: nothing in it knows which. Version 1 boots
from whatever entry the machine started with (on a board, the harness's own); from then
on systemd-boot's default is the first entry named os-v* in its order, and that order puts
the newest version first and an entry out of tries last.
"""

import re
import struct
from typing import Any

import pytest

LOADER_CONF = "timeout 0\ndefault os-v*\n"
LOADER_VARIABLE = "/sys/firmware/efi/efivars/{}-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

APP = """\
[Unit]
Description=The device's application

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""

HEALTH = """\
[Unit]
Description=Is the device's application up?
After=os-app.service
Before=boot-complete.target
# A boot that fails its health check is restarted: systemd-boot counts it against the entry.
FailureAction=reboot

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/systemctl is-active --quiet os-app.service

[Install]
RequiredBy=boot-complete.target
"""

# What the first step learns of the ESP and the image's own UKI, for the updates made from it.
image: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _boots_from_its_own_esp() -> None:
    if "unsupported" in image:
        pytest.skip(image["unsupported"])


def linux() -> str:
    """Where systemd-boot finds UKIs: EFI/Linux on the ESP, which systemd mounts on /boot,
    or on /efi where /boot holds files of its own (Debian bookworm's kernel packages)."""
    return f"{image['esp']}/EFI/Linux"


def loader_variable(machine, name: str) -> str:
    """An EFI variable of systemd-boot's, as text (4 bytes of attributes, then UTF-16)."""
    raw = machine.check(f"cat {LOADER_VARIABLE.format(name)}").stdout
    return raw[4:].decode("utf-16-le").rstrip("\0")


def without_counter(entry: str) -> str:
    """os-v3+0-2.efi -> os-v3.efi"""
    return re.sub(r"\+\d+(-\d+)?(\.efi)$", r"\2", entry)


def running_version(machine) -> tuple[str, int]:
    """The boot entry systemd-boot started (its counter left off) and the version on the
    running kernel's command line (1: the image as built)."""
    entry = without_counter(loader_variable(machine, "LoaderEntrySelected"))
    version = re.search(r"\bharness\.os-version=(\d+)", machine.check("cat /proc/cmdline").text)
    return entry, int(version.group(1)) if version else 1


def cmdline_section(header: bytes) -> tuple[int, int, int, int]:
    """Where a UKI whose first bytes are `header` keeps its embedded command line: the
    offset of the section's header, and the offset, size and room of its text in the file."""
    pe = struct.unpack_from("<I", header, 0x3C)[0]
    sections, optional_header = struct.unpack_from("<H12xH", header, pe + 6)
    for i in range(sections):
        at = pe + 24 + optional_header + 40 * i
        name, size, _, room, offset = struct.unpack_from("<8sIIII", header, at)
        if name.rstrip(b"\0") == b".cmdline":
            return at, offset, size, room
    raise AssertionError("the image's UKI has no .cmdline section")


def write_at(path: str, offset: int, data: bytes) -> str:
    """A shell command writing `data` into `path` at `offset`."""
    escaped = "".join(f"\\{byte:03o}" for byte in data)
    return f"printf '{escaped}' | dd of={path} bs=1 seek={offset} conv=notrunc status=none"


def installer(version: int, tries: int, extra: str = "", slowly: bool = False) -> str:
    """The shell script installing version `version` as the entry os-vN+TRIES.efi: a copy
    of the image's UKI under a name systemd-boot ignores, its command line rewritten, then
    renamed into place. `slowly` copies a MB at a time, synced, with pauses: an update
    arriving over a slow link, for a power cut in the middle."""
    part = f"{linux()}/os-v{version}.part"
    # rw: a version boots with its own command line only where nothing adds to it (a board).
    cmdline = f"{image['cmdline']} rw harness.os-version={version} {extra}".strip().encode() + b"\0"
    assert len(cmdline) <= image["room"], f"{len(cmdline)} bytes of command line, room for {image['room']}"
    if slowly:
        blocks = -(-image["size"] // 2**20)
        copy = (
            f"for i in $(seq 0 {blocks - 1}); do dd if={image['uki']} of={part} bs=1M count=1 skip=$i seek=$i"
            " conv=notrunc oflag=sync status=none; sleep 0.5; done"
        )
    else:
        copy = f"cp {image['uki']} {part}"
    return "\n".join(
        [
            "set -e",
            f"rm -f {linux()}/os-v*.part",
            copy,
            write_at(part, image["text_at"], cmdline.ljust(image["room"], b"\0")),
            write_at(part, image["header_at"] + 8, struct.pack("<I", len(cmdline))),
            f"sync {part}",
            f"mv {part} {linux()}/os-v{version}+{tries}.efi",
            f"sync {linux()}",
        ]
    )


def wait_blessed(machine, seconds: int = 60) -> None:
    """Wait for systemd-bless-boot to have marked this boot good. It runs once
    boot-complete.target is reached, which the control agent waits for too, so this is
    seconds; a boot stuck short of it fails naming the jobs it still waits for."""
    waited = machine.run(
        f"timeout {seconds} sh -c 'until systemctl is-active --quiet systemd-bless-boot.service; do sleep 0.5; done'",
        timeout=seconds + 30,
    )
    if waited.status != 0:
        state = machine.run(
            "systemctl status --no-pager systemd-bless-boot.service boot-complete.target; systemctl list-jobs --no-pager"
        )
        raise AssertionError(f"systemd-bless-boot did not run within {seconds} s:\n{state.text}")


def test_version_1_boots_and_reports_itself(machine):
    entry, version = running_version(machine)
    assert version == 1 and not entry.startswith("os-v"), (entry, version)
    esp = machine.run("bootctl --print-esp-path")
    if esp.status != 0:
        # A VM whose systemd-stub predates 254 boots from an ESP the harness adds (the stub
        # reads no command line from SMBIOS): an update on the image's ESP would never boot.
        image["unsupported"] = (
            "systemd-boot did not start from this machine's own ESP (a VM with systemd < 254 boots "
            f"from one the harness adds): {esp.stderr.decode().strip()}"
        )
        pytest.skip(image["unsupported"])
    image["esp"] = esp.text
    ukis = machine.check(f"ls {linux()}").text.split()
    assert len(ukis) == 1, f"the image should have one UKI: {ukis}"
    uki = f"{linux()}/{ukis[0]}"
    header_at, text_at, size, room = cmdline_section(machine.check(f"head -c 4096 {uki}").stdout)
    text = machine.check(f"dd if={uki} bs=1 skip={text_at} count={size} status=none").stdout
    image.update(
        uki=uki,
        size=int(machine.check(f"stat -c %s {uki}").text),
        header_at=header_at,
        text_at=text_at,
        room=room,
        cmdline=text.rstrip(b"\0").decode(),
    )
    loader = f"{image['esp']}/loader"
    machine.check(f"mkdir -p {loader} && printf '{LOADER_CONF}' >{loader}/loader.conf && sync {loader}")
    # The device's application and its health check, on the root from now on.
    for name, unit in (("os-app.service", APP), ("os-health.service", HEALTH)):
        machine.check(f"umask 022; cat >/etc/systemd/system/{name} <<'EOF'\n{unit}EOF")
    machine.check("systemctl daemon-reload && systemctl enable --now os-app.service os-health.service")


def test_version_2_boots_with_tries_and_is_blessed(machine):
    machine.check(installer(2, tries=3))
    machine.reboot()
    assert running_version(machine) == ("os-v2.efi", 2)
    machine.check("systemctl is-active os-health.service")
    wait_blessed(machine)
    entries = machine.check(f"ls {linux()}").text.split()
    assert "os-v2.efi" in entries, f"version 2 was not blessed: {entries}"


def test_broken_version_3_runs_out_of_tries_and_version_2_comes_back(machine):
    machine.check(installer(3, tries=1, extra="systemd.mask=os-app.service"))
    # The boot of version 3 fails its health check and restarts; the control agent
    # answers only a boot that passed it, so this returns with the fallback up.
    machine.reboot()
    machine.console.expect(r"Kernel command line: .*harness\.os-version=3", timeout=5)
    assert running_version(machine) == ("os-v2.efi", 2)
    entries = machine.check(f"ls {linux()}").text.split()
    assert "os-v3+0-1.efi" in entries, f"version 3 is not marked bad: {entries}"


def test_a_power_cut_during_an_update_keeps_the_last_good_version(machine):
    machine.check("head -c 1000000 /dev/urandom >/var/tmp/precious && sync")
    precious = machine.check("sha256sum /var/tmp/precious").text
    script = installer(4, tries=3, slowly=True)
    machine.check(f"cat >/run/install <<'EOF'\n{script}\nEOF\nsetsid -f sh /run/install </dev/null >/dev/null 2>&1")
    part = f"{linux()}/os-v4.part"
    machine.check(f"while [ $(stat -c %s {part} 2>/dev/null || echo 0) -lt 4000000 ]; do sleep 0.2; done")
    machine.power_cycle()
    assert running_version(machine) == ("os-v2.efi", 2)
    assert machine.check("sha256sum /var/tmp/precious").text == precious
    left = int(machine.check(f"stat -c %s {part}").text)
    assert left < image["size"], "the copy was complete before the power cut"
    esp = machine.check(f"findmnt -n -o SOURCE -t vfat {image['esp']}").text
    machine.check(f"umount {image['esp']} && fsck.fat -n {esp}")
    errors = machine.run("journalctl -k -b | grep -Ei 'EXT4-fs error|FAT-fs .*error|I/O error'").text
    assert not errors, errors
    # The update is done again, and boots.
    machine.check(installer(4, tries=3))
    machine.reboot()
    assert running_version(machine) == ("os-v4.efi", 4)
