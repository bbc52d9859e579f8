"""The files an image build installs so that the harness can test the image.

Everything else reaches the guest at boot (the test unit and its drop-ins as credentials,
the payload as credentials or extra trees), so this list is short: the generator that
turns those credentials into units on systemd older than 256, which reads them itself.
An image made by any tool gets them with `os-harness guest-files ROOT` run against its
root tree during the build (docs/own-image.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs

GUEST_DIR = Path(__file__).parent
GENERATOR_NAME = "harness-credential-units"
# Where systemd looks for generators; the image's own and /etc's override ours, by name.
GENERATOR_PATHS = (
    f"usr/lib/systemd/system-generators/{GENERATOR_NAME}",
    f"etc/systemd/system-generators/{GENERATOR_NAME}",
    f"lib/systemd/system-generators/{GENERATOR_NAME}",
)
GENERATOR_SINCE = 256  # systemd reads systemd.extra-unit.* credentials itself from here on


@attrs.frozen
class GuestFile:
    source: Path  # in this package
    target: str  # relative to the image's root
    mode: int


GUEST_FILES = (GuestFile(GUEST_DIR / "credential-units.generator", GENERATOR_PATHS[0], 0o755),)


def install_guest_files(root: Path) -> list[Path]:
    """Copy the guest files into the tree `root` (an image's root directory); returns
    what was written. Harmless on systemd 256 and later: the generator then does nothing."""
    written = []
    for f in GUEST_FILES:
        target = root / f.target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, target)
        os.chmod(target, f.mode)
        written.append(target)
    return written
