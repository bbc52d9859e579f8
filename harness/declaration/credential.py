"""A systemd credential a test hands to the guest, as its declaration spells it:
`NAME=VALUE` (the text), `NAME=@FILE` (the bytes of a file of the test's directory, or
of an absolute path for a secret) or `NAME=env:VARIABLE` (read when the test runs).

A declaration is written by people and read at `meson setup`: a credential is at most
CREDENTIAL_LIMIT bytes, whatever its source (a file, the environment, the text), a file
a regular one (a FIFO would block setup for ever, /dev/zero would fill the memory), and a
relative one stays inside the test's directory (`..` and symlinks do not lead out of it;
a symlink loop is an error naming it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from harness.declaration.small_file import NotRegularFile, read_small_file
from harness.errors import DeclarationError

CREDENTIAL_LIMIT = 1024 * 1024  # bytes: systemd takes at most 1 MiB of credentials in all
# systemd credential names are file names below /run/credentials.
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,255}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@attrs.frozen
class Credential:
    """A systemd credential handed to the guest: a name and exact bytes."""

    name: str
    value: bytes
    secret: bool = False  # from the environment: a CI secret, say (masked in everything the host keeps)
    # A file of the test's own tree (NAME=@FILE, relative): the test's code or data, as
    # public as its meson.build, so what the guest prints of it is not masked.
    own_file: bool = False

    @classmethod
    def parse(
        cls, spec: str, test_dir: Path, source: str, env: Mapping[str, str] | None = None
    ) -> Credential:
        """`NAME=VALUE` (text as written), `NAME=@FILE` (bytes of FILE, relative to the
        test; an absolute FILE is taken for a secret) or `NAME=env:VARIABLE` (the
        variable's value when the test runs). Without `env` (at meson setup, where CI's
        secrets may not be there yet) env: and absolute @FILE credentials are checked, not
        read."""
        name, sep, value = spec.partition("=")
        if not sep:
            raise DeclarationError(
                source,
                "credentials",
                f"'{spec}' is not NAME=VALUE",
                "write each credential as 'NAME=VALUE' or 'NAME=@FILE'",
            )
        if not CREDENTIAL_NAME.fullmatch(name) or name in (".", ".."):
            raise DeclarationError(
                source,
                "credentials",
                f"'{name}' is not a valid credential name",
                "use letters, digits and . _ - @ : + only",
            )
        if value.startswith("env:"):
            variable = value.removeprefix("env:")
            if not ENV_NAME.fullmatch(variable):
                raise DeclarationError(
                    source, "credentials", f"'{name}': '{variable}' is not an environment variable's name"
                )
            if env is None:
                return cls(name, b"", secret=True)
            if variable not in env:
                raise DeclarationError(
                    source,
                    "credentials",
                    f"'{name}' comes from ${variable}, which is not set",
                    f"export {variable} before meson test (in CI: from the secret store)",
                )
            value_bytes = env[variable].encode(errors="surrogateescape")
            if len(value_bytes) > CREDENTIAL_LIMIT:
                raise DeclarationError(
                    source,
                    "credentials",
                    f"'{name}' comes from ${variable}, which holds {len(value_bytes)} bytes, more than "
                    f"{CREDENTIAL_LIMIT // 2**20} MB",
                    "a credential is small: put a file's path in the variable and read it in the test",
                )
            return cls(name, value_bytes, secret=True)
        if value.startswith("@"):
            if "\0" in value:
                raise DeclarationError(
                    source, "credentials", f"'{name}': the file name holds a NUL character"
                )
            secret = Path(value[1:]).is_absolute()  # outside the test's tree: a secret file, say
            if secret and env is None:
                return cls(name, b"", secret=True)  # read when the test runs, like env:
            return cls(
                name, _credential_file(test_dir, value[1:], source), secret=secret, own_file=not secret
            )
        text = value.encode(errors="surrogateescape")
        if len(text) > CREDENTIAL_LIMIT:
            raise DeclarationError(
                source,
                "credentials",
                f"'{name}' is {len(text)} bytes, more than {CREDENTIAL_LIMIT // 2**20} MB",
                "a credential is small: ship the rest in the image or in extra-trees",
            )
        return cls(name, text)


def _credential_file(test_dir: Path, name: str, source: str) -> bytes:
    """The bytes of a NAME=@FILE credential, checked as the module says."""
    path = test_dir / name

    def bad(
        problem: str, fix: str = "NAME=@FILE reads FILE relative to the test's directory"
    ) -> DeclarationError:
        return DeclarationError(source, "credentials", problem, fix)

    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop: RuntimeError before Python 3.13
        raise bad(f"{path} cannot be resolved: {getattr(e, 'strerror', None) or 'a symlink loop'}") from None
    if not Path(name).is_absolute() and not resolved.is_relative_to(test_dir.resolve()):
        raise bad(
            f"{path} is outside the test's directory",
            "give a file of the test's directory, or an absolute path",
        )
    try:
        data = read_small_file(path, CREDENTIAL_LIMIT)
    except NotRegularFile:
        raise bad(f"{path} is not a regular file") from None
    except OSError as e:
        raise bad(f"cannot read {path}: {e.strerror}") from None
    if data is None:
        raise bad(f"{path} is larger than {CREDENTIAL_LIMIT // 2**20} MB", "a credential is a small file")
    return data


def write_private(directory: Path, name: str, content: bytes) -> Path:
    """Write a file that only the current user can read (the directory is private too): a credential's value on its way to a machine."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path
