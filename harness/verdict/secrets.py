"""Credential values never stay in what the host keeps of a run.

A test's credentials reach the guest through files only the user can read (SMBIOS,
fw_cfg) and its declaration reaches the wrapper through a file, not argv; but the guest
may print a value, and then it is in the console log, the journal, the record (reason,
subtests, journal excerpt) and the report drawn from them. After the machine stopped,
each value is replaced there: by `***` in text, by as many `*` in the journal export,
whose binary fields carry their length. Values shorter than MIN_MASKED bytes are left
alone unless they are secrets (env: credentials): masking "1" or "yes" would garble
every log without hiding anything. Files of the test's own tree (NAME=@FILE, relative)
are not masked: they are its scripts and data, as public as its meson.build, and masking
them turned `systemctl cat` of a unit shipped that way into `***`. A console attached to
a terminal (interactive runs) shows what the guest prints as it prints it.

`Secrets` is the one way a run withholds them, whatever kind of test it is (the path
after a boot, wrapper.conclude): the machine's words (what the guest reported, a host
test's steps) are masked as they enter the run, before a verdict or a subtest is drawn
from them; the gates read each log as it will be kept; and the kept logs are rewritten
once the machine stopped (not before: it may still be writing them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from harness.boot.machine import LogFile
from harness.declaration.declaration import TestDeclaration
from harness.verdict.log_dir import HOST_TEST_LOG, JOURNAL_EXPORT

MIN_MASKED = 4
MASK = "***"


def masked_values(decl: TestDeclaration) -> list[bytes]:
    """The byte strings to hide, longest first (so a value inside another goes too)."""
    values: set[bytes] = set()
    for c in decl.credentials:
        if c.own_file:
            continue
        for value in (c.value, c.value.strip()):
            if len(value) >= MIN_MASKED or (c.secret and value):
                values.add(value)
    return sorted(values, key=len, reverse=True)


def mask_bytes(data: bytes, values: Sequence[bytes], same_length: bool = False) -> bytes:
    for value in values:
        data = data.replace(value, b"*" * len(value) if same_length else MASK.encode())
    return data


def mask_text(text: str, values: Sequence[bytes]) -> str:
    for value in values:
        text = text.replace(value.decode(errors="replace"), MASK)
    return text


def mask_file(path: Path, values: Sequence[bytes], same_length: bool = False) -> None:
    """Rewrite `path` with the values hidden, if it holds any of them."""
    if not values or not path.is_file():
        return
    data = path.read_bytes()
    masked = mask_bytes(data, values, same_length)
    if masked != data:
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_bytes(masked)
            partial.replace(path)
        except OSError:  # e.g. a full disk: better no log than one that shows the secret
            partial.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise


@attrs.frozen
class Secrets:
    """A test's values to withhold, and how each thing its run keeps hides them."""

    values: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, decl: TestDeclaration) -> Secrets:
        return cls(tuple(masked_values(decl)))

    def text(self, text: str) -> str:
        """`text` with each value replaced by `***`: the machine's words as they enter the run."""
        return mask_text(text, self.values)

    def log(self, path: Path, data: bytes) -> bytes:
        """`data`, read from the log at `path`, as that log is kept: what the gates read
        while the machine may still be writing it."""
        return mask_bytes(data, self.values, same_length=_keeps_length(path))

    def withhold(self, log_dir: Path, backend_files: Iterable[LogFile]) -> None:
        """Rewrite every log the run keeps with the values hidden: the consoles, pytest's
        output, the backend's text files and the journal export. Once the machine stopped."""
        if not self.values:
            return
        kept = (
            *log_dir.glob("console*.log"),
            log_dir / HOST_TEST_LOG,
            *(log_dir / f.name for f in backend_files if f.text),
            log_dir / JOURNAL_EXPORT,
        )
        for path in kept:
            mask_file(path, self.values, same_length=_keeps_length(path))


NO_SECRETS = Secrets()


def _keeps_length(path: Path) -> bool:
    """A journal export's binary fields carry their length: a value there becomes as many `*`."""
    return path.name == JOURNAL_EXPORT
