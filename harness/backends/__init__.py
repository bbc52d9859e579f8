"""The machines a test can run on, one subpackage each, all behind the `Backend` protocol
of harness.backend: `qemu` boots VMs on this host, `autokit` drives a board through an
autokit worker, `fake` scripts an ending for the unit tests of the flow.

A backend depends on the core (declaration, plan, notify protocol, guest units); the
core never imports a backend: `make_backend` is called by the command line only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from harness.backend import Backend
from harness.errors import HarnessError


class BackendName(enum.StrEnum):
    QEMU = "qemu"
    AUTOKIT = "autokit"


def make_backend(name: str, autokit_worker: str, env: Mapping[str, str]) -> Backend:
    """The backend meson's options ask for, overridden by HARNESS_* for one run. Each is
    imported only when chosen: a VM run does not load the worker client, and back."""
    name = env.get("HARNESS_BACKEND") or name
    if name == BackendName.QEMU:
        from harness.backends.qemu.backend import QemuBackend

        return QemuBackend()
    if name == BackendName.AUTOKIT:
        from harness.backends.autokit.backend import AutokitBackend

        url = env.get("HARNESS_AUTOKIT_WORKER") or autokit_worker
        if not url:
            raise HarnessError(
                "the autokit backend needs a worker URL",
                "meson setup -Dtest-backend=autokit -Dautokit-worker=http://HOST:PORT, "
                "or set HARNESS_AUTOKIT_WORKER",
            )
        return AutokitBackend(url, env.get("HARNESS_AUTOKIT_TOKEN") or None)
    raise HarnessError(
        f"unknown backend '{name}'", f"use one of: {', '.join(BackendName)} (-Dtest-backend, HARNESS_BACKEND)"
    )
