"""The extra disks a test declares (`disks: ['512M', '2G']`): their sizes, bounded. A VM
gets each as a sparse file (backends/qemu/command.py); a board must offer the `disks`
feature.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from harness.errors import DeclarationError

DISK_SIZE = re.compile(r"([1-9][0-9]{0,6})([MGT])")
DISK_UNITS = {"M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_DISK = 1 << 40
MAX_DISKS = 8


def disk_sizes(sizes: list[str], bad: Callable[[str, str, str], DeclarationError]) -> tuple[int, ...]:
    """Each extra disk's size in bytes, from `512M`, `2G` or `1T`."""
    if len(sizes) > MAX_DISKS:
        raise bad("disks", f"{len(sizes)} disks", f"declare at most {MAX_DISKS}")
    result = []
    for size in sizes:
        match = DISK_SIZE.fullmatch(size)
        number = int(match.group(1)) * DISK_UNITS[match.group(2)] if match else 0
        if not 0 < number <= MAX_DISK:
            raise bad(
                "disks", f"'{size[:40]}' is not a disk size", "write a size from 1M to 1T: '512M', '2G'"
            )
        result.append(number)
    return tuple(result)
