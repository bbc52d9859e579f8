"""systemd's own integration tests, from Debian's source package of the image's systemd.

`python3 -m harness systemd-tests --release trixie --into DIR TEST-NN-NAME...` asks apt
for the source package of systemd that the image's release has (the apt sources mkosi
builds the image from, sandbox/debian-RELEASE/, read as deb-src), downloads it, unpacks
upstream's test/units/ from its original tarball (upstream's files as released, not
Debian's patched copy), and lays out one tree per test, DIR/TEST-NN-NAME/, the way systemd
installs its tests (/usr/lib/systemd/tests/testdata/): the test's scripts, the helpers
and units every test shares, the test's own units directory; and in place of upstream's
test-control.sh the harness's (guest/test-control.sh: the same functions, and each
subtest and testcase told to the host). A test declares its tree with `extra-trees`
(test/systemd/meson.build). The download is kept in DIR/source/ and used again while apt
offers the same version.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path

from harness.declaration.declaration import TEST_NAME
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]
TEST_CONTROL = Path(__file__).parent.parent / "guest" / "test-control.sh"
TESTDATA = Path("usr/lib/systemd/tests/testdata")


def fetch(release: str, into: Path, names: Iterable[str]) -> str:
    """Lay out the trees of the tests `names` in `into`; the source package's version."""
    names = list(names)
    into = into.absolute()  # apt reads a relative Dir:: option from /etc/apt/
    for name in names:
        if not TEST_NAME.fullmatch(name):
            raise HarnessError(
                f"'{name}' is not a test of systemd's (TEST-NN-NAME)", "name one of test/units/"
            )
    source = into / "source"
    source.mkdir(parents=True, exist_ok=True)
    version, orig = _download(release, into / "apt", source)
    units = _unpack(orig, into / f"upstream-{version}")
    for name in names:
        _lay_out(units, name, into / name)
    return version


def _apt(apt_dir: Path) -> list[str]:
    """apt-get with lists of its own: nothing of the host's apt set-up changes."""
    return [
        "apt-get",
        "-q",
        f"-o=Dir::Etc::SourceList={apt_dir}/none.list",
        f"-o=Dir::Etc::SourceParts={apt_dir}/sources",
        f"-o=Dir::State::Lists={apt_dir}/lists",
        "-o=Dir::Cache::pkgcache=",
        "-o=Dir::Cache::srcpkgcache=",
        "-o=Dir::State::status=/dev/null",
        "-o=APT::Sandbox::User=root",
    ]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except OSError as e:
        raise HarnessError(f"cannot {what}: {e}", "this needs apt-get (a Debian or Ubuntu host)") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise HarnessError(f"cannot {what}: {tail}", "check that the host reaches Debian's archive")
    return done.stdout


def _download(release: str, apt_dir: Path, source: Path) -> tuple[str, Path]:
    """The version of systemd's source package in `release`, and its original tarball."""
    if not (ROOT / "sandbox").is_dir():
        raise HarnessError(
            "systemd's own tests are laid out from a checkout of os-harness (its sandbox/ apt sources), "
            f"and {ROOT} is an installed package",
            "run them from a clone of os-harness: meson setup build -Dsystemd-tests=true",
        )
    mkosi_sources = (
        ROOT / "sandbox" / f"debian-{release}" / "etc" / "apt" / "sources.list.d" / "mkosi.sources"
    )
    if not mkosi_sources.is_file():
        raise HarnessError(
            f"no apt sources for Debian {release} ({mkosi_sources})",
            "systemd's tests come from Debian's source package: use a Debian image (-Dimage-release=)",
        )
    (apt_dir / "sources").mkdir(parents=True, exist_ok=True)
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources" / "image.sources").write_text(
        mkosi_sources.read_text().replace("Types: deb\n", "Types: deb-src\n")
    )
    apt = _apt(apt_dir)
    _run([*apt, "update"], f"read Debian {release}'s source lists")
    # Asked where none of its files are: apt leaves out those already downloaded here.
    uris = _run([*apt, "source", "--print-uris", "systemd"], "find systemd's source package", cwd=apt_dir)
    files = re.findall(r"^'\S+' (\S+) \d+", uris, re.MULTILINE)
    orig = next((f for f in files if ".orig.tar." in f), None)
    dsc = next((f for f in files if f.endswith(".dsc")), None)
    if orig is None or dsc is None:
        raise HarnessError(f"apt offers no source package of systemd in {release}", "check the apt sources")
    if not (source / orig).is_file():
        _run([*apt, "source", "--download-only", "systemd"], "download systemd's source package", cwd=source)
    version = dsc.removeprefix("systemd_").removesuffix(".dsc")
    return version, source / orig


def _unpack(orig: Path, into: Path) -> Path:
    """Upstream's test/units/ and integration-tests/ of the original tarball, once."""
    done = into / ".complete"
    if not done.exists():
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        with tarfile.open(orig) as tar:
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.partition("/")[2].startswith(("test/units/", "test/integration-tests/"))
            ]
            tar.extractall(into, members=wanted, filter="data")
        done.touch()
    (top,) = [p for p in into.iterdir() if p.is_dir()]
    return top / "test"


def _lay_out(test: Path, name: str, tree: Path) -> None:
    """The tree of one test: what systemd installs of it, and what every test shares."""
    units = test / "units"
    own = sorted(p for p in units.iterdir() if p.name.startswith((f"{name}.", f"{name}-")))
    if not any(p.name == f"{name}.sh" for p in own):
        raise HarnessError(
            f"systemd's source has no test {name} (no units/{name}.sh)", "name one that it has"
        )
    shared = [p for p in units.iterdir() if not p.name.startswith("TEST-") and p.name != "test-control.sh"]
    shutil.rmtree(tree, ignore_errors=True)
    target = tree / TESTDATA / "units"
    target.mkdir(parents=True)
    for path in (*own, *shared):
        copy = shutil.copytree if path.is_dir() else shutil.copy2
        copy(path, target / path.name)
    shutil.copy2(TEST_CONTROL, target / "test-control.sh")
    # Upstream puts the test's units on PID 1's unit path (SYSTEMD_UNIT_PATH= on the kernel
    # command line, which would make every such test boot cold here); linked into
    # /run/systemd/system, they are found as the test starts them: those of its own
    # directory, and those of units/ named after it (not units/'s others, which stand in
    # for basic.target and the like).
    linked = [Path("/") / TESTDATA / "units" / p.name for p in own if not p.name.endswith(".sh")]
    own_units = test / "integration-tests" / name / f"{name}.units"
    if own_units.is_dir():
        shutil.copytree(own_units, tree / TESTDATA / f"{name}.units")
        linked += [Path("/") / TESTDATA / f"{name}.units" / p.name for p in sorted(own_units.iterdir())]
    if linked:
        unit_dir = tree / "run" / "systemd" / "system"
        unit_dir.mkdir(parents=True)
        for unit in linked:
            (unit_dir / unit.name).symlink_to(unit)
