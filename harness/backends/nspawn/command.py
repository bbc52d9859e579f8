"""systemd-nspawn's command line, as pure functions of the plan, and where the binary
comes from.

The container boots the image's own systemd on its root partition, read-only under a
tmpfs overlay (`--volatile=overlay`: what the test writes is gone with the container, as
a VM's volatile overlay is). The plan's credentials reach the container's systemd as a
VM's SMBIOS ones do, each read by nspawn from a private file (`--load-credential`): the
test unit and the harness's helper units arrive as `systemd.extra-unit.*` the same way.
The plan's command-line options for systemd become arguments of the container's init;
the console is nspawn's stdout (`--console=read-only`: no TTY needed), where the units
report with the console channel's marker, as on a board. nspawn runs as the first process
of a PID and a mount namespace (NAMESPACES), so that nothing of the container outlives it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.boot.plan import BootPlan
from harness.errors import HarnessError
from harness.guest.reporting import JOURNAL_PORT_PATH
from harness.guest.units import VIRTIO_CONTROL
from harness.settings import Settings

# What the VM's volatile overlay is, nspawn does itself; the other options of the plan's
# command line are systemd's, which the container's init reads from its arguments.
NOT_FOR_INIT = ("rw", "ro")
VOLATILE = "systemd.volatile="
# nspawn killed leaves its container running; as the first process of a PID namespace of
# its own, its end ends every process below it, the container's included. unshare dies
# with the wrapper (the parent-death signal), and nspawn with unshare (--kill-child).
# nspawn also mounts into /run/systemd/nspawn (a tmpfs per container in unix-export/, its
# propagate/ directory) and here, with no systemd as the host's PID 1, leaves them all
# behind: in a mount namespace of its own, on a tmpfs of its own there, they end with it.
NAMESPACES = ("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation=private")
NSPAWN_STATE = "/run/systemd/nspawn"
PRIVATE_STATE = (
    "sh",
    "-c",
    'mkdir -p "$1" && mount -t tmpfs -o mode=0755 harness-nspawn "$1" && shift && exec "$@"',
    "sh",
    NSPAWN_STATE,
)
# mkosi's tools tree: a newer systemd than the host's, run through its own loader.
TOOLS_TREE = "tools"
LOADER = "usr/lib/{triplet}/ld-linux-x86-64.so.2"
TRIPLETS = {"x86_64": "x86_64-linux-gnu"}


def init_arguments(cmdline: Sequence[str]) -> list[str]:
    """The plan's command line as the container's init takes it."""
    return [w for w in cmdline if w not in NOT_FOR_INIT and not w.startswith(VOLATILE)]


def bind_path(path: Path) -> str:
    """A path as nspawn's --bind= takes it: a colon separates paths there, and backslash
    escapes are read."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def machine_name(test: str, pid: int) -> str:
    """The container's name (and hostname): the test's, unique among parallel runs."""
    return f"{test.lower()}-{pid}"[:64]


def nspawn_command(
    nspawn: Sequence[str],
    root: Path,
    plan: BootPlan,
    credential_files: Sequence[tuple[str, Path]],
    machine: str,
    journal_export: Path,
    control_tty: str | None = None,
) -> list[str]:
    """The command that boots the container on `root` (the mounted root partition), its
    credentials read from `credential_files` (name, private file), the host's file
    `journal_export` where a VM's journal port is (what the test unit writes its journal
    to there lands in the test's log directory, as a VM's port's does)."""
    return [
        *NAMESPACES,
        *PRIVATE_STATE,
        *nspawn,
        f"--directory={root}",
        f"--machine={machine}",
        "--volatile=overlay",
        "--register=no",  # no machined needed on the host
        "--keep-unit",  # in the wrapper's cgroup: no systemd as the host's PID 1 needed
        "--private-network",
        "--settings=no",  # no .nspawn file of the host's changes the run
        "--console=read-only",
        f"--bind={bind_path(journal_export)}:{JOURNAL_PORT_PATH}",
        *([f"--bind={control_tty}:{VIRTIO_CONTROL}"] if control_tty else []),
        *(f"--load-credential={name}:{path}" for name, path in credential_files),
        "--boot",
        *init_arguments(plan.cmdline),
    ]


def tools_tree_nspawn(image: Path, architecture: str) -> list[str] | None:
    """mkosi's tools tree beside the image's build (mkosi.output/tools), its nspawn run
    through the tree's own loader and libraries (the host's may be older or lack them)."""
    tree = image.parent / TOOLS_TREE
    triplet = TRIPLETS.get(architecture)
    binary = tree / "usr/bin/systemd-nspawn"
    if triplet is None or not binary.is_file():
        return None
    loader = tree / LOADER.format(triplet=triplet)
    if not loader.is_file():
        return None
    libs = f"{tree}/usr/lib/{triplet}:{tree}/usr/lib/{triplet}/systemd"
    return [str(loader), "--library-path", libs, str(binary)]


def find_nspawn(settings: Settings, image: Path, architecture: str) -> list[str]:
    """HARNESS_NSPAWN, else the tools tree's, else systemd-nspawn on PATH."""
    if settings.nspawn:
        found = shutil.which(settings.nspawn)
        if found is None:
            raise HarnessError(
                f"HARNESS_NSPAWN={settings.nspawn} is not a program",
                "point it at systemd-nspawn, or unset it",
            )
        return [found]
    tools = tools_tree_nspawn(image, architecture)
    if tools is not None:
        return tools
    found = shutil.which("systemd-nspawn")
    if found is None:
        raise HarnessError(
            "no systemd-nspawn: not in a tools tree beside the image, nor on PATH",
            "install it (Debian: apt-get install systemd-container), build the image with "
            "ToolsTree=default, or set HARNESS_NSPAWN",
        )
    return [found]
