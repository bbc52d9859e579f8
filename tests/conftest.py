"""Fixtures shared by the tests. The unit tests (`pytest -m "not vm"`) need none of the
VM ones; the end-to-end tests (`-m vm`) get the built image, a virtual worker, and a
TMPDIR of their own for the wrappers they start. Helpers are in e2e.py and images.py."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import IMAGE, ROOT, TOKEN, free_port, sha256


@pytest.fixture(scope="session", autouse=True)
def wrapper_tmpdir(tmp_path_factory):
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
def image():
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
def worker_process(tmp_path):
    """A virtual autokit worker on a free port, with its QEMU board; stopped afterwards,
    and its board with it."""
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.backends.autokit.virtual_worker",
                f"--listen=127.0.0.1:{port}",
                f"--state-dir={tmp_path / 'worker'}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_AUTOKIT_TOKEN=TOKEN),
        )
        deadline = time.monotonic() + 20
        while "listening" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.url = f"http://127.0.0.1:{port}"
        proc.log = log_path
        yield proc
        proc.terminate()
        proc.wait(timeout=30)
    board = subprocess.run(["pgrep", "-af", str(tmp_path / "worker")], capture_output=True, text=True).stdout
    assert "qemu-system" not in board, "the virtual worker left its board running"
