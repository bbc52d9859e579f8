"""Extra trees: directories a test ships into its guest, packed into one credential that
the test unit unpacks before the test starts."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from harness.declaration.declaration import TestDeclaration
from harness.declaration.extra_tree import TREES_LIMIT
from harness.errors import DeclarationError
from harness.guest.units import guest_credentials, render_test_unit
from harness.verdict.secrets import masked_values
from tests.helpers import declaration


@pytest.fixture
def test_dir(tmp_path):
    test = tmp_path / "TEST-99-UNIT"
    units = test / "files" / "usr" / "lib" / "tests"
    units.mkdir(parents=True)
    (units / "run.sh").write_text("#!/bin/bash\necho hi\n")
    (units / "run.sh").chmod(0o755)
    (units / "lib.sh").write_text("x=1\n")
    os.symlink("run.sh", units / "link.sh")
    (test / "data").mkdir()
    (test / "data" / "conf").write_text("k=v\n")
    return test


def members(decl: TestDeclaration) -> dict[str, tarfile.TarInfo]:
    assert decl.extra_trees is not None
    with tarfile.open(fileobj=io.BytesIO(decl.extra_trees.value)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_trees_are_packed_under_their_targets_with_modes_and_links(test_dir):
    d = declaration("--extra-trees=files", "--extra-trees=data:/etc/harness/", test_dir=str(test_dir))
    m = members(d)
    assert sorted(m) == [
        "etc/harness/conf",
        "usr",
        "usr/lib",
        "usr/lib/tests",
        "usr/lib/tests/lib.sh",
        "usr/lib/tests/link.sh",
        "usr/lib/tests/run.sh",
    ]
    assert m["usr/lib/tests/run.sh"].mode == 0o755 and m["usr/lib/tests/run.sh"].uid == 0
    assert m["usr/lib/tests/link.sh"].issym() and m["usr/lib/tests/link.sh"].linkname == "run.sh"
    assert d.extra_trees is not None and d.extra_trees.name == "harness.trees"


def test_the_test_unit_unpacks_them_before_the_test_and_they_are_not_masked(test_dir):
    d = declaration("--extra-trees=files", "--credentials=token=0123456789abcdef", test_dir=str(test_dir))
    unit = render_test_unit(d, interactive=False)
    # GNU tar keeps the guest's directories as they are; another tar (busybox) unpacks plainly
    assert (
        "ExecStartPre=/bin/sh -c 'tar --no-overwrite-dir -xzf %d/harness.trees -C / 2>/dev/null"
        " || tar -xzf %d/harness.trees -C /'" in unit
    )
    assert unit.index("ExecStartPre=/bin/sh -c 'tar") < unit.index("ExecStart=/bin/sh")
    assert "ImportCredential=harness.trees" in unit
    assert "harness.trees" in [c.name for c in guest_credentials(d, unit, interactive=False)]
    assert masked_values(d) == [b"0123456789abcdef"]
    plain = declaration(test_dir=str(test_dir))
    assert plain.extra_trees is None and "tar " not in render_test_unit(plain, interactive=False)


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("missing", "is not a directory"),
        (":/usr", "names no directory"),
        ("files:usr/lib", "is not an absolute, normal guest path"),
        ("files:/usr/../etc", "is not an absolute, normal guest path"),
    ],
)
def test_a_bad_tree_stops_setup_naming_the_key(test_dir, spec, problem):
    with pytest.raises(DeclarationError, match=problem) as e:
        declaration(f"--extra-trees={spec}", test_dir=str(test_dir))
    assert e.value.key == "extra-trees"


def test_trees_too_big_for_a_credential_or_with_a_fifo_stop_setup(test_dir):
    (test_dir / "files" / "noise").write_bytes(os.urandom(TREES_LIMIT + 1))
    with pytest.raises(DeclarationError, match="more than 262144"):
        declaration("--extra-trees=files", test_dir=str(test_dir))
    (test_dir / "files" / "noise").unlink()
    os.mkfifo(test_dir / "files" / "fifo")
    with pytest.raises(DeclarationError, match="fifo is not a regular file"):
        declaration("--extra-trees=files", test_dir=str(test_dir))


def test_a_host_driven_test_has_no_unit_to_unpack_trees(test_dir):
    (test_dir / "test_x.py").write_text("def test_x(machine):\n    pass\n")
    with pytest.raises(DeclarationError, match=r"machine\.put"):
        declaration("--extra-trees=files", "--host=test_x.py", test_dir=str(test_dir))


def test_the_trees_credential_name_is_the_harness_own(test_dir):
    with pytest.raises(DeclarationError, match=r"'harness\.trees' is the harness's own credential"):
        declaration("--credentials=harness.trees=x", test_dir=str(test_dir))
