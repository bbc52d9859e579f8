"""The one way the harness reports a problem it cannot turn into a test result.

A HarnessError is an infrastructure fault (no QEMU, no image, a bad declaration, QEMU
crashing): the test did not get to run, so meson must show ERROR (exit 99), not FAIL.
Every such error says what is wrong and what the user can do about it.
"""

from __future__ import annotations


class HarnessError(Exception):
    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what}\n  fix: {self.fix}" if self.fix else self.what


class DeclarationError(HarnessError):
    """A test declaration that cannot be run as written: names the file and the key."""

    def __init__(self, source: str, key: str, problem: str, fix: str = "") -> None:
        super().__init__(f"{source}: '{key}': {problem}", fix)
        self.source = source
        self.key = key


class LogDirBusy(HarnessError):
    """Another run of the same test holds its log directory: this run writes nothing there."""
