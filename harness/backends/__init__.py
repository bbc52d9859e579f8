"""The machines a test can run on, one subpackage each, all behind the `Backend` protocol
of harness.boot.machine: `qemu` boots VMs on this host, `nspawn` containers on this host
(for tests that need no kernel of their own), `autokit` drives a board through an autokit
worker, `lava` submits jobs to a LAVA lab, `fake` scripts an ending for the unit tests of
the flow.

A backend depends on the core (declaration, plan, notify protocol, guest units); the
core never imports a backend: `make_backend` is called by the command line only.
"""

from __future__ import annotations

import enum

import attrs

from harness.boot.machine import Backend
from harness.declaration.declaration import TestDeclaration
from harness.declaration.small_file import NotRegularFile, read_small_file
from harness.errors import HarnessError
from harness.settings import Settings


class BackendName(enum.StrEnum):
    QEMU = "qemu"
    AUTOKIT = "autokit"
    LAVA = "lava"
    NSPAWN = "nspawn"


def make_backend(settings: Settings) -> Backend:
    """The backend meson's options ask for, overridden by HARNESS_* for one run (both are
    in `settings`). Each is imported only when chosen: a VM run does not load the worker
    client, and back."""
    name = settings.backend
    if name == BackendName.QEMU:
        from harness.backends.qemu.backend import QemuBackend

        return QemuBackend()
    if name == BackendName.NSPAWN:
        from harness.backends.nspawn.backend import NspawnBackend

        return NspawnBackend()
    if name == BackendName.AUTOKIT:
        from harness.backends.autokit.backend import AutokitBackend

        url = settings.autokit_worker
        if not url:
            raise HarnessError(
                "the autokit backend needs a worker URL",
                "meson setup -Dtest-backend=autokit -Dautokit-worker=http://HOST:PORT, "
                "or set HARNESS_AUTOKIT_WORKER",
            )
        token = bearer_token("HARNESS_AUTOKIT_TOKEN", settings.autokit_token, settings.autokit_token_file)
        return AutokitBackend(url, token)
    if name == BackendName.LAVA:
        from harness.backends.lava.backend import LavaBackend, image_server

        url = settings.lava_url
        if not url:
            raise HarnessError(
                "the lava backend needs the LAVA server's URL",
                "meson setup -Dtest-backend=lava -Dlava-url=http://HOST:PORT, or set HARNESS_LAVA_URL",
            )
        return LavaBackend(
            url,
            settings.lava_device_type,
            bearer_token("HARNESS_LAVA_TOKEN", settings.lava_token, settings.lava_token_file),
            queue_limit=settings.lava_queue_timeout,
            image_server=image_server(settings.lava_image_dir, settings.lava_image_url),
        )
    raise HarnessError(
        f"unknown backend '{name}'", f"use one of: {', '.join(BackendName)} (-Dtest-backend, HARNESS_BACKEND)"
    )


def backend_for(decl: TestDeclaration, settings: Settings) -> tuple[Backend, str]:
    """The backend `decl` runs on, and where a choice was made, what it was and why: the
    backend `settings` name, except that where containers are preferred
    (HARNESS_PREFER_CONTAINERS=1, with qemu) a test that needs no VM runs in a container
    (backends/nspawn/placement.py: place). A person at a shell keeps the VM."""
    if settings.prefer_containers and settings.backend == BackendName.QEMU and not settings.shell:
        from harness.backends.nspawn.placement import place

        placement = place(decl)
        chosen = make_backend(attrs.evolve(settings, backend=placement.backend))
        return chosen, f"{decl.name}: {placement.describe()} (containers preferred)"
    return make_backend(settings), ""


TOKEN_FILE_LIMIT = 4096


def bearer_token(name: str, token: str, token_file: str) -> str | None:
    """The token the variable `name` holds (`token`), or the file `name`_FILE names
    (`token_file`: the way to keep it out of meson's testlog, which holds the whole
    environment of `meson test`), without the whitespace around it (a file saved with
    CRLF, `$(cat token)`): an HTTP header cannot carry a CR, and the error would show the
    token. Never quoted in an error."""
    if token_file and token:
        raise HarnessError(
            f"both {name} and {name}_FILE are set", f"unset one of them ({name}_FILE is safer)"
        )
    token = (read_token_file(token_file, f"{name}_FILE") if token_file else token).strip()
    source = f"{name}_FILE's file" if token_file else name
    bad = [i for i, c in enumerate(token) if not (c.isascii() and c.isprintable()) or c == " "]
    if bad:
        raise HarnessError(
            f"{source} holds a character an HTTP header cannot carry (at position {bad[0] + 1} "
            f"of {len(token)})",
            f"make {source} the token alone, one line of printable ASCII",
        )
    return token or None


def read_token_file(path: str, name: str) -> str:
    """A small regular file: not a FIFO that blocks the run, not /dev/zero."""
    try:
        data = read_small_file(path, TOKEN_FILE_LIMIT)
    except NotRegularFile:
        raise HarnessError(
            f"{name}={path} is not a regular file", "point it at the file holding the token"
        ) from None
    except OSError as e:
        raise HarnessError(
            f"cannot read {name}={path}: {e.strerror}", "point it at the file holding the token"
        ) from None
    if data is None:
        raise HarnessError(
            f"{name}={path} is larger than a token ({TOKEN_FILE_LIMIT} bytes at most)",
            "point it at the file holding the token alone",
        )
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise HarnessError(
            f"{name}={path} holds a byte that is not ASCII", "make the file the token alone, printable ASCII"
        ) from None
