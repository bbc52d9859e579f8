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
"""

from __future__ import annotations

from pathlib import Path

from harness.declaration.declaration import TestDeclaration

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


def mask_bytes(data: bytes, values: list[bytes], same_length: bool = False) -> bytes:
    for value in values:
        data = data.replace(value, b"*" * len(value) if same_length else MASK.encode())
    return data


def mask_text(text: str, values: list[bytes]) -> str:
    for value in values:
        text = text.replace(value.decode(errors="replace"), MASK)
    return text


def mask_file(path: Path, values: list[bytes], same_length: bool = False) -> None:
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
