"""Handing systemd credentials and extra kernel command line to a guest.

Everything the guest gets travels as SMBIOS type 11 OEM strings, each read by QEMU from
a file only the user can read: secrets never show in `ps`, and no quoting or comma
escaping is needed. Where a machine has no SMBIOS, fw_cfg carries the credentials.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

from harness.declaration.credential import Credential, write_private
from harness.errors import HarnessError

FW_CFG_NAME_MAX = 55  # QEMU's fw_cfg file names are at most 56 bytes with the NUL.
FW_CFG_PREFIX = "opt/io.systemd.credentials/"


def smbios_credential(cred: Credential) -> str:
    return f"io.systemd.credential.binary:{cred.name}={base64.b64encode(cred.value).decode()}"


def cmdline_extra_strings(cmdline: Iterable[str]) -> list[str]:
    """OEM strings that add to the command line of a UKI (the stub) or a systemd-boot entry."""
    line = " ".join(cmdline)
    if not line:
        return []
    return [f"io.systemd.stub.kernel-cmdline-extra={line}", f"io.systemd.boot.kernel-cmdline-extra={line}"]


def smbios_args(strings: Iterable[str], directory: Path) -> list[str]:
    args = []
    for i, s in enumerate(strings):
        path = write_private(directory, f"smbios-{i}", s.encode())
        args += ["-smbios", f"type=11,path={path}"]
    return args


def fw_cfg_args(credentials: Iterable[Credential], directory: Path) -> list[str]:
    args = []
    for i, cred in enumerate(credentials):
        name = FW_CFG_PREFIX + cred.name
        if len(name) > FW_CFG_NAME_MAX:
            raise HarnessError(
                f"credential '{cred.name}' is too long a name for fw_cfg ({len(name)} > {FW_CFG_NAME_MAX} bytes)",
                "this machine has no SMBIOS, so credentials go through fw_cfg: shorten the name",
            )
        path = write_private(directory, f"fw_cfg-{i}", cred.value)
        args += ["-fw_cfg", f"name={name},file={path}"]
    return args
