"""The declaration on its way from meson to the wrapper: a file of `--KEY=VALUE` lines
that test/meson.build writes at `meson setup`, read back exactly as written and parsed
by rules of our own.

Exactly: meson escapes only the backslash and the newline, so the file is split at "\\n"
and nowhere else (str.splitlines() also splits at \\r, \\x0b, \\x85, U+2028 and U+2029, and
a credential holding one of them would inject an option) and read as bytes (text mode
would turn a \\r into a newline). `encode` is the same escaping, for the tests that keep
meson's and ours equal.

Our own rules, not argparse's: argparse reads a bare `--` as the end of the options (and
then fails with a traceback), prints its help for a `--help` value, converts numbers of
any length, and takes minutes for tens of thousands of options. Here every line is
`--KEY=VALUE` with a key of declaration.KEYS, a number is at most nine digits, a key
that takes one value takes it once, and `--declared=KEY` lines (one per key the test's
dict holds, empty lists included) let an unknown key stop `meson setup`. Every problem is
a DeclarationError naming the test's meson.build and the key; the file and the option
count are bounded, so no declaration can take the wrapper's memory or time.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from harness.declaration.keys import CONFIGURATION_KEY_NAMES, KEY_NAMES, KEYS, Key
from harness.declaration.small_file import NotRegularFile, read_small_file
from harness.errors import DeclarationError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPTIONS = 10_000
MAX_DIGITS = 9
# How meson's format() renders a dict or a list where a string was meant: '{'a' : 'b'}'.
# Booleans systemd's template spells 'yes' and 'no', accepted so too.
SYSTEMD_YES_NO = ("memory-accounting",)
MESON_CONTAINER = re.compile(r"\{\}|\{'.*\}|\[\]|\[['\[{].*\]|\[(true|false|-?\d+)(, .*)?\]", re.DOTALL)


def encode(options: list[str]) -> bytes:
    """The file test/meson.build writes for `options`: one a line, backslash and newline escaped."""
    return "\n".join(o.replace("\\", "\\\\").replace("\n", "\\n") for o in options).encode()


def decode(data: bytes, source: str) -> list[str]:
    """The options of a declaration file, exactly as meson was given them."""
    lines = [line for line in data.split(b"\n") if line]
    test_dir = next((line[len(b"--test-dir=") :] for line in lines if line.startswith(b"--test-dir=")), None)
    if test_dir is not None and test_dir.isascii():
        source = str(Path(test_dir.decode()) / "meson.build")  # where the user fixes it
    options = []
    for line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            key = line.partition(b"=")[0].removeprefix(b"--").decode("utf-8", "replace")
            raise DeclarationError(
                source,
                key,
                "a value is not UTF-8 text",
                "write the value as text, or put the bytes in a @FILE",
            ) from None
        options.append(re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text))
    return options


def read(path: Path) -> list[str]:
    """The options in the declaration file at `path` (a regular file, MAX_FILE_BYTES at most)."""
    source = str(path)
    try:
        data = read_small_file(path, MAX_FILE_BYTES)
    except NotRegularFile:
        raise DeclarationError(source, "declaration", "is not a regular file") from None
    except OSError as e:
        raise DeclarationError(
            source,
            "declaration",
            f"cannot be read: {e.strerror}",
            "meson setup --reconfigure BUILD writes it again",
        ) from None
    if data is None:
        raise DeclarationError(
            source,
            "declaration",
            f"is larger than {MAX_FILE_BYTES // 2**20} MB",
            "put large credentials in files (NAME=@FILE)",
        )
    return decode(data, source)


def parse(options: list[str], where: str = "the declaration") -> argparse.Namespace:
    """The declaration's values, one attribute per key (Key.attribute) and `test_dir`,
    defaults where a key is not given: what TestDeclaration.from_options checks further.
    Errors name the test's meson.build, or `where` the options came from without one."""
    test_dirs = [o.removeprefix("--test-dir=") for o in options if o.startswith("--test-dir=")]
    source = str(Path(test_dirs[0]) / "meson.build") if test_dirs else where
    if len(test_dirs) > 1:
        raise DeclarationError(source, "test-dir", "is given twice", "meson.build passes it once")
    if test_dirs and ("\0" in test_dirs[0] or not test_dirs[0].startswith("/")):
        raise DeclarationError(
            where, "test-dir", "is not an absolute path", "meson.build passes the test's directory"
        )
    if len(options) > MAX_OPTIONS:
        raise DeclarationError(source, "declaration", f"more than {MAX_OPTIONS} values", "declare fewer")
    keys = {k.name: k for k in KEYS if k.name != "configuration"}
    values = argparse.Namespace(**{k.attribute: [] if k.repeated else None for k in keys.values()})
    given: set[str] = set()
    for option in options:
        name, sep, value = option.removeprefix("--").partition("=")
        if not option.startswith("--") or not sep or not name:
            raise DeclarationError(source, name or option, f"'{option[:80]}' is not --KEY=VALUE")
        if name == "test-dir":
            values.test_dir = value
        elif name == "declared":
            _check_declared(value, source)
        elif name not in keys:
            raise _unknown(source, name)
        else:
            _set(values, keys[name], value, source, given)
    if not test_dirs:
        raise DeclarationError(source, "test-dir", "is missing", "meson.build passes --test-dir")
    if values.name is None:
        raise DeclarationError(
            source, "name", "is missing", "set 'name' : fs.name(meson.current_source_dir())"
        )
    for key in keys.values():
        if not key.repeated and getattr(values, key.attribute) is None:
            setattr(
                values,
                key.attribute,
                key.default if isinstance(key.default, bool | int) else str(key.default),
            )
    return values


def _check_declared(value: str, source: str) -> None:
    section, colon, name = value.rpartition(":")
    known = CONFIGURATION_KEY_NAMES if colon else KEY_NAMES
    if section not in ("", "configuration") or name not in known:
        raise _unknown(source, value)


def _unknown(source: str, name: str) -> DeclarationError:
    known = ", ".join(KEY_NAMES) + "; in configuration: " + ", ".join(CONFIGURATION_KEY_NAMES)
    return DeclarationError(source, name[:80], "unknown key", f"use one of: {known}")


def _set(values: argparse.Namespace, key: Key, value: str, source: str, given: set[str]) -> None:
    if "\0" in value and key.name != "credentials":
        raise DeclarationError(source, key.name, "holds a NUL character", "remove it")
    if key.name != "credentials" and MESON_CONTAINER.fullmatch(value):
        raise DeclarationError(
            source, key.name, f"is a dict or a list where text is expected ({value[:60]})", "give it text"
        )
    if key.repeated:
        getattr(values, key.attribute).append(value)
        return
    if key.name in given:
        raise DeclarationError(source, key.name, "is given twice")
    given.add(key.name)
    if isinstance(key.default, bool):
        words = ("true", "false", "yes", "no") if key.name in SYSTEMD_YES_NO else ("true", "false")
        if value not in words:
            raise DeclarationError(source, key.name, f"'{value[:80]}' is not {' or '.join(words)}")
        setattr(values, key.attribute, value in ("true", "yes"))
    elif isinstance(key.default, int):
        if not re.fullmatch(rf"-?[0-9]{{1,{MAX_DIGITS}}}", value):
            raise DeclarationError(
                source, key.name, f"'{value[:80]}' is not a number (at most {MAX_DIGITS} digits)"
            )
        setattr(values, key.attribute, int(value))
    else:
        setattr(values, key.attribute, value)
