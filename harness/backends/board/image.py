"""The per-test image a board is flashed with: the shared image plus what a VM gets
through SMBIOS, written into the copy (the shared image is never touched).

Boards have no SMBIOS and no fw_cfg, and what systemd reads from elsewhere decides
where each piece goes:
- The kernel command line goes into a systemd-boot entry on the ESP that starts the
  image's own UKI with the full command line (the stub takes it when Secure Boot is
  off), made the default with no menu timeout.
- The test unit, the emergency guard and their drop-ins go into /etc/systemd/system of
  the root file system. As credentials they would not work: systemd-stub does pass
  `*.cred` files from the ESP, but PID 1 files them as untrusted (encrypted)
  credentials, which the generators behind `systemd.extra-unit.*` never read; and
  `systemd.set_credential_binary=` on the command line is capped by the kernel's
  command line size, which a unit file alone can exceed.
- The test's own credentials go into /etc/credstore/ (mode 0600), which
  ImportCredential= searches after the system credentials, so the test reads them from
  $CREDENTIALS_DIRECTORY exactly as in a VM.
Both file systems are written without mounting anything: mtools for the ESP, debugfs
for the ext4 root, each at its partition's offset.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from harness.boot.plan import BootPlan
from harness.declaration.credential import Credential
from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE, ROOT_PARTITION_TYPES, DiskFormat, read_gpt
from harness.image.esp import ENTRY_NAME, boot_entry, run_tool, uki_cmdline


def credential_files(creds: list[Credential]) -> list[tuple[PurePosixPath, bytes, int]]:
    """(path, content, mode) in the root file system for each credential a VM would get."""
    etc = PurePosixPath("/etc/systemd/system")
    files = []
    for c in creds:
        if c.name.startswith("systemd.extra-unit."):
            files.append((etc / c.name.removeprefix("systemd.extra-unit."), c.value, 0o644))
        elif c.name.startswith("systemd.unit-dropin."):
            unit, _, dropin = c.name.removeprefix("systemd.unit-dropin.").partition("~")
            files.append((etc / f"{unit}.d" / f"{dropin or 'credential'}.conf", c.value, 0o644))
        else:
            files.append((PurePosixPath("/etc/credstore") / c.name, c.value, 0o600))
    return files


def build_board_image(
    shared: Path, uki: Path | None, title: str, cmdline: list[str], creds: list[Credential], workdir: Path
) -> Path:
    out = workdir / "board.raw"
    run_tool(["cp", "--sparse=always", "--reflink=auto", str(shared), str(out)], "copy the image")
    with out.open("rb") as f:
        partitions = read_gpt(f)
    esp = next((p for p in partitions if p.type_uuid == ESP_TYPE), None)
    root = next((p for p in partitions if p.type_uuid in ROOT_PARTITION_TYPES.values()), None)
    if esp is None or root is None or uki is None:
        raise HarnessError(
            f"{shared} cannot boot a board: it needs an ESP, a root partition and a UKI",
            "a board boots a UKI from the ESP of a GPT disk with a Discoverable Partitions root: "
            "mkosi's Bootable=yes (this repository's mkosi.conf) makes one",
        )
    esp_image = f"{out}@@{esp.offset}"
    ukis = [
        line.strip().rsplit("/", 1)[-1]
        for line in run_tool(
            ["mdir", "-b", "-i", esp_image, "::/EFI/Linux"], "list the UKIs on the ESP"
        ).splitlines()
        if line.strip().endswith(".efi")
    ]
    if not ukis:
        raise HarnessError(
            f"{shared}: no UKI in /EFI/Linux on the ESP", "put the UKI in /EFI/Linux (mkosi: Bootable=yes)"
        )
    full_cmdline = " ".join([uki_cmdline(uki), *cmdline]).strip()
    entry = workdir / ENTRY_NAME
    entry.write_text(boot_entry(title, ukis[0], full_cmdline))
    loader = workdir / "loader.conf"
    loader.write_text(f"default {ENTRY_NAME}\ntimeout 0\n")
    run_tool(
        ["mcopy", "-o", "-i", esp_image, str(entry), f"::/loader/entries/{ENTRY_NAME}"],
        "write the boot entry",
    )
    run_tool(["mcopy", "-o", "-i", esp_image, str(loader), "::/loader/loader.conf"], "write loader.conf")

    script = []
    for i, (path, content, mode) in enumerate(credential_files(creds)):
        source = workdir / f"file-{i}"
        source.write_bytes(content)
        source.chmod(mode)
        script += [
            f"mkdir {path.parent}",
            f"rm {path}",
            f"write {source} {path}",
            f"set_inode_field {path} uid 0",
            f"set_inode_field {path} gid 0",
        ]
    # debugfs goes on past a failing line (mkdir of an existing directory, rm of a
    # missing file); whether every file landed is checked below.
    run_tool(
        ["debugfs", "-w", "-f", "-", f"{out}?offset={root.offset}"],
        "write the root file system",
        stdin="\n".join(script) + "\n",
    )
    listing = run_tool(
        ["debugfs", "-R", f"ls -p {PurePosixPath('/etc/systemd/system')}", f"{out}?offset={root.offset}"],
        "check the root file system",
    )
    for path, _, _ in credential_files(creds):
        if path.parent == PurePosixPath("/etc/systemd/system") and f"/{path.name}/" not in listing:
            raise HarnessError(f"could not write {path} into {out}", "is the root partition full? (debugfs)")
    return out


def plan_board_image(plan: BootPlan, workdir: Path) -> Path:
    """The board image of one planned boot: the plan's image, command line and credentials.
    It holds the test's credentials: `workdir` must stay private."""
    if plan.image.disk_format != DiskFormat.RAW or plan.image.table.kind != "gpt":
        raise HarnessError(
            f"{plan.image.path} cannot boot a board: a board is flashed with a raw GPT disk, and this is "
            f"a {plan.image.disk_format} disk with {'an MBR' if plan.image.table.kind == 'dos' else 'no GPT'}",
            "give the raw GPT disk (qemu-img convert -O raw), or run the test on qemu",
        )
    return build_board_image(
        plan.image.path, plan.image.uki, plan.name, list(plan.cmdline), list(plan.credentials), workdir
    )
