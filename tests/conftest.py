"""Fixtures shared by the tests. The unit tests (`pytest -m "not vm"`) need none of the
VM ones; the end-to-end tests (`-m vm`) get the built image, a virtual worker, and a
TMPDIR of their own for the wrappers they start. Helpers are in e2e.py and images.py."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import IMAGE, WorkerProcess, running_worker, sha256


@pytest.fixture(scope="session", autouse=True)
def wrapper_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wrappers these tests start make their private directories here rather than in
    /tmp, so a leftover check sees this run's leftovers only: another run on the machine
    (a second checkout, CI beside a developer) may hold its own harness-NAME-* at the time."""
    tmp_path_factory.getbasetemp()  # pytest's own directories stay where users look for them
    path = Path(tempfile.mkdtemp(prefix="e2e-"))
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    yield path
    if before is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def image() -> Iterator[Path]:
    """The image `meson compile -C build mkosi` built (or HARNESS_IMAGE); no test may
    write to it."""
    if not IMAGE.is_file():
        pytest.fail(
            f"no image at {IMAGE}: build it with 'meson compile -C build mkosi' (or set HARNESS_IMAGE)"
        )
    before = sha256(IMAGE)
    yield IMAGE
    assert sha256(IMAGE) == before, "a test run wrote to the shared image"


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[WorkerProcess]:
    """A virtual autokit worker on a free port, with its QEMU board; stopped afterwards,
    and its board with it."""
    with running_worker(tmp_path) as proc:
        yield proc
