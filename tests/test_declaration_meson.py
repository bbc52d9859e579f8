"""The worst declarations of the fuzzer (test_declaration_fuzz.py), written in a
meson.build as a user would, through real `meson setup`: each is accepted, with its
values reaching the wrapper exactly as written, or stops setup with an error naming the
test's meson.build and the key; never a traceback, a hang, or more than 200 MB.

Marked vm: these run real meson and the harness as processes (about 2 s each), with the
end-to-end tests rather than the unit tests; they boot nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.declaration import file as declaration_file
from tests.e2e import meson_project

pytestmark = pytest.mark.vm

# (what the test's dict adds, the key an error must name; None: accepted)
CASES = [
    ("'credentials' : ['c=v\\u2029--test-dir=/etc']", None),
    ("'credentials' : ['c=v\\u0085--help']", None),
    ("'credentials' : ['c=v\\r--firmware=uefi']", None),
    ("'credentials' : ['c=v\\u000b--timeout=1', 'd=\\u2028']", None),
    ("'configuration' : {'env' : {'A' : 'b\\u2029--test-dir=/etc'}}", None),
    ("'cmdline' : ['x\\n--test-dir=/etc']", None),
    ("'bogus' : []", "bogus"),
    ("'configuration' : {'bogus' : []}", "configuration:bogus"),
    ("'cmdline' : {'a' : 'b'}", "cmdline"),
    ("'qemu-args' : [['-a', 'b']]", "qemu-args"),
    ("'test-dir' : '/etc'", "test-dir"),
    ("'firmware' : '--'", "firmware"),
    ("'timeout' : '--'", "timeout"),
    ("'priority' : '" + "9" * 4300 + "'", "priority"),
    ("'exit-code' : '--help'", "exit-code"),
    ("'name' : '--'", "name"),
    ("'slow' : 'yes'", "slow"),
    ("'storage' : ''", "storage"),
    ("'boot' : 'cold\\n--test-dir=/etc'", "boot"),
    ("'cmdline' : ['\\x00']", "cmdline"),
    ("'host' : '../../etc/passwd'", "host"),
    ("'credentials' : ['x=@fifo']", "credentials"),
    ("'credentials' : ['x=@../../../../../../../../dev/zero']", "credentials"),
    ("'credentials' : ['x=@../../../../etc/passwd']", "credentials"),
    ("'credentials' : ['x=@link']", "credentials"),
    ("'credentials' : ['x=@sub']", "credentials"),
    ("'credentials' : ['x=@big']", "credentials"),
    ("'credentials' : ['c=@a\\x00b']", "credentials"),
    ("'credentials' : ['no-equals']", "credentials"),
    ("'credentials' : ['x=@loop']", "credentials"),
    ("'extra-trees' : ['" + "9" * 4300 + "']", "extra-trees"),
    ("'extra-trees' : ['a\\x00b']", "extra-trees"),
    ("'host' : 'a\\x00b.py'", "host"),
]

MEMORY_LIMIT_KB = 200 * 1024
# Runs a command and prints the peak RSS of its largest process (meson, or the wrapper it ran).
PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def add_test(project: Path, name: str, extra: str) -> Path:
    test = project / "test" / name
    test.mkdir()
    (test / "ok.txt").write_text("fine\n")
    (test / "big").write_bytes(b"x" * (1024 * 1024 + 1))
    (test / "sub").mkdir()
    os.mkfifo(test / "fifo")
    (test / "link").symlink_to("/etc/passwd")
    (test / "loop").symlink_to("loop")
    name_line = (
        "" if extra.startswith("'name'") else "        'name' : fs.name(meson.current_source_dir()),\n"
    )
    (test / "meson.build").write_text(
        f"integration_tests += [integration_test_template + {{\n{name_line}        {extra},\n}}]\n"
    )
    return test


@pytest.mark.parametrize("extra, key", CASES, ids=[f"case{i:02d}" for i in range(len(CASES))])
def test_a_hostile_declaration_through_meson_setup(tmp_path, extra, key):
    project = meson_project(tmp_path / "project")
    test = add_test(project, "TEST-42-HOSTILE", extra)
    build = project / "build"
    r = subprocess.run(
        [sys.executable, "-c", PEAK, "meson", "setup", str(build), "-Dintegration-tests=true"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, HARNESS_INTERACTIVE="0"),
    )
    output = r.stdout + r.stderr
    peak_kb = int(r.stderr.strip().splitlines()[-1])
    assert "Traceback" not in output, output
    assert peak_kb < MEMORY_LIMIT_KB, f"{peak_kb} KB"
    if key is None:
        assert r.returncode == 0, output
        written = declaration_file.read(build / "test" / "TEST-42-HOSTILE.declaration")
        assert [o for o in written if o.startswith("--test-dir=")] == [f"--test-dir={test}"]
        assert "--test-dir=/etc" not in written
    else:
        assert r.returncode != 0, output
        # A name that is no directory: only the list of tests knows it.
        source = project / "test" if key == "name" else test / "meson.build"
        assert f"{source}: '{key}'" in output, output


def test_two_tests_of_one_name_stop_setup(tmp_path):
    project = meson_project(tmp_path / "project")
    add_test(project, "TEST-42-ONE", "'timeout' : 60")
    other = project / "test" / "TEST-43-TWO"
    other.mkdir()
    (other / "meson.build").write_text(
        "integration_tests += [integration_test_template + {'name' : 'TEST-42-ONE'}]\n"
    )
    r = subprocess.run(
        ["meson", "setup", "build", "-Dintegration-tests=true"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "'name': two tests are named TEST-42-ONE" in r.stdout + r.stderr


def test_systemds_spelling_of_the_test_unit_reaches_the_wrapper_as_lines(tmp_path):
    project = meson_project(tmp_path / "project")
    add_test(
        project,
        "TEST-42-UPSTREAM",
        "'configuration' : {'unit' : {'DefaultDependencies' : 'no'}, "
        "'service' : {'NotifyAccess' : 'all', 'TimeoutStopSec' : '270s'}, "
        "'wants' : 'multi-user.target user@4711.service', 'memory-accounting' : 'yes'}",
    )
    build = project / "build"
    r = subprocess.run(
        ["meson", "setup", str(build), "-Dintegration-tests=true"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    written = declaration_file.read(build / "test" / "TEST-42-UPSTREAM.declaration")
    assert "--unit=DefaultDependencies=no" in written
    assert "--service=NotifyAccess=all" in written and "--service=TimeoutStopSec=270s" in written
    assert "--wants=multi-user.target user@4711.service" in written
    assert "--memory-accounting=yes" in written
