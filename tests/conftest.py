import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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
