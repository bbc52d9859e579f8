"""systemd's own tests: the trees laid out from the source package's original tarball
(here a small one made by the test; the download itself is apt's, run in CI)."""

from __future__ import annotations

import io
import tarfile

import pytest

from harness.errors import HarnessError
from harness.project.systemd_tests import TEST_CONTROL, _lay_out, _unpack

FILES = {
    "systemd-257.9/test/units/TEST-22-TMPFILES.sh": "#!/bin/bash\nrun_subtests\n",
    "systemd-257.9/test/units/TEST-22-TMPFILES.01.sh": "#!/bin/bash\n",
    "systemd-257.9/test/units/TEST-23-UNIT-FILE.sh": "#!/bin/bash\n",
    "systemd-257.9/test/units/util.sh": "util\n",
    "systemd-257.9/test/units/test-control.sh": "upstream's\n",
    "systemd-257.9/test/units/a.service": "[Service]\n",
    "systemd-257.9/test/units/TEST-22-TMPFILES-helper.service": "[Service]\n",
    "systemd-257.9/test/integration-tests/TEST-22-TMPFILES/TEST-22-TMPFILES.units/x.service": "[Unit]\n",
    "systemd-257.9/src/core/main.c": "int main;\n",
}


@pytest.fixture
def orig(tmp_path):
    path = tmp_path / "systemd_257.9.orig.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def test_a_tree_holds_the_tests_files_the_shared_ones_and_our_test_control(tmp_path, orig):
    test = _unpack(orig, tmp_path / "upstream")
    assert not (tmp_path / "upstream" / "systemd-257.9" / "src").exists(), "only the tests are unpacked"
    _lay_out(test, "TEST-22-TMPFILES", tmp_path / "tree")
    testdata = tmp_path / "tree" / "usr/lib/systemd/tests/testdata"
    assert sorted(p.name for p in (testdata / "units").iterdir()) == [
        "TEST-22-TMPFILES-helper.service",
        "TEST-22-TMPFILES.01.sh",
        "TEST-22-TMPFILES.sh",
        "a.service",
        "test-control.sh",
        "util.sh",
    ]
    assert (testdata / "units" / "TEST-22-TMPFILES.sh").read_text() == FILES[
        "systemd-257.9/test/units/TEST-22-TMPFILES.sh"
    ], "upstream's script, byte for byte"
    assert (testdata / "units" / "test-control.sh").read_bytes() == TEST_CONTROL.read_bytes()
    assert (testdata / "TEST-22-TMPFILES.units" / "x.service").is_file()
    linked = {p.name: str(p.readlink()) for p in (tmp_path / "tree" / "run/systemd/system").iterdir()}
    assert linked == {
        "x.service": "/usr/lib/systemd/tests/testdata/TEST-22-TMPFILES.units/x.service",
        "TEST-22-TMPFILES-helper.service": "/usr/lib/systemd/tests/testdata/units/TEST-22-TMPFILES-helper.service",
    }, "the test's own units, not units/'s others"


def test_a_test_the_source_does_not_have_is_an_error_naming_it(tmp_path, orig):
    test = _unpack(orig, tmp_path / "upstream")
    with pytest.raises(HarnessError, match="no test TEST-99-NOPE"):
        _lay_out(test, "TEST-99-NOPE", tmp_path / "tree")
