"""A repository whose tests the harness runs: the meson glue `os-harness init` writes into
it, the glue's version the wrapper checks, and the tests its build directory declares.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError
from harness.image.parts import add_image_options, image_parts_of


def meson_test_args(build_dir: Path, name: str) -> list[str]:
    """The arguments meson gives `python3 -m harness run` for the test `name`."""
    try:
        tests = json.loads((build_dir / "meson-info" / "intro-tests.json").read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(
            f"cannot read the tests of {build_dir} ({e})",
            "meson setup BUILD first (os-harness's own checkout: with -Dintegration-tests=true), and pass BUILD with -C",
        ) from None
    for t in tests:
        if t["name"] == name and "run" in t["cmd"]:
            cmd: list[str] = t["cmd"]
            return cmd[cmd.index("run") + 1 :]
    names = ", ".join(sorted(t["name"] for t in tests if "run" in t["cmd"])) or "none"
    raise HarnessError(f"{build_dir} has no test {name}", f"use one of: {names}")


GLUE_DIR = Path(__file__).parent / "glue"
# The glue's version: test/meson.build says which it is (harness_glue_version) and passes it
# to every `validate` and `run`; a copy older or newer than this wrapper is refused, but
# version 2's (it passed --timeout-factor, which is still taken) is still run.
GLUE_VERSION = 3
ACCEPTED_GLUE_VERSIONS = (2, 3)
HARNESS_OWNED = ("test/meson.build", "test/declaration.in")  # init --update rewrites these
EXAMPLE_TEST = "test/TEST-01-BOOTS"


def check_glue(version: int | None, build_dir: Path | None = None) -> None:
    """Refuse a glue of another version (None: a hand run, no glue involved)."""
    if version is None or version in ACCEPTED_GLUE_VERSIONS:
        return
    where = f"the meson glue of {build_dir}'s source" if build_dir else "the meson glue (test/meson.build)"
    raise HarnessError(
        f"{where} is version {version}, and this os-harness needs version {GLUE_VERSION}",
        "refresh it from the installed harness: os-harness init --update SOURCE_DIR, then "
        "meson setup --reconfigure BUILD",
    )


def glue_files(project_name: str) -> dict[str, str]:
    """What `os-harness init` writes, by path relative to the repository."""
    return {
        "meson.build": (GLUE_DIR / "meson.build").read_text().replace("@PROJECT@", project_name),
        "meson_options.txt": (GLUE_DIR / "meson_options.txt").read_text(),
        **{path: (GLUE_DIR / path).read_text() for path in HARNESS_OWNED},
        f"{EXAMPLE_TEST}/meson.build": EXAMPLE_DECLARATION,
        f"{EXAMPLE_TEST}/test.sh": EXAMPLE_SCRIPT,
    }


EXAMPLE_DECLARATION = """\
# An example test: test.sh reaches the guest as an extra tree (no image rebuild), runs as
# the test unit's command, and passes when it exits 0. Copy this directory to add a test.
integration_tests += [
        integration_test_template + {
                'name' : fs.name(meson.current_source_dir()),
                'extra-trees' : ['.:/usr/lib/harness/tests/' + fs.name(meson.current_source_dir())],
                'timeout' : 120,
        },
]
"""
EXAMPLE_SCRIPT = """\
#!/bin/sh
# Runs inside the booted image. Exit 0: OK; anything else: FAIL.
set -eu
test -d /run/systemd/system   # booted by systemd
echo "booted: $(uname -r)"
"""


def init(root: Path, update: bool) -> list[str]:
    """Write the glue into the repository `root`; what was written, relative to it. Files
    that exist are left alone, except the harness's own with `update`."""
    written = []
    for path, text in glue_files(root.resolve().name or "tests").items():
        target = root / path
        owned = path in HARNESS_OWNED
        if target.exists() and not (update and owned):
            if owned and target.read_text() != text:
                raise HarnessError(
                    f"{target} exists and is not this os-harness's glue",
                    f"os-harness init --update {root} replaces it (and {HARNESS_OWNED[1]})",
                )
            continue
        if update and not owned and not target.exists() and path.startswith(EXAMPLE_TEST):
            continue  # an update adds no example to a repository that has its tests
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if path.endswith(".sh"):
            target.chmod(0o755)
        written.append(path)
    return written


def missing_glue(root: Path) -> list[str]:
    """What a repository's own meson.build and options lack of the glue, said as what to add."""
    missing = []
    build = root / "meson.build"
    if build.is_file() and not re.search(r"subdir\(\s*'test'\s*\)", build.read_text()):
        missing.append(f"{build} is yours and has no subdir('test'): add it, after project()")
    options = next((root / n for n in ("meson.options", "meson_options.txt") if (root / n).is_file()), None)
    ours = re.findall(r"(?m)^option\('([^']+)'", (GLUE_DIR / "meson_options.txt").read_text())
    theirs = set(re.findall(r"(?m)^option\('([^']+)'", options.read_text())) if options else set()
    if options and set(ours) - theirs:
        lacking = ", ".join(o for o in ours if o not in theirs)
        missing.append(
            f"{options} lacks the harness's options {lacking}: copy them from {GLUE_DIR / 'meson_options.txt'}"
        )
    return missing


def cmd_init(o: argparse.Namespace) -> int:
    root = Path(o.directory)
    written = init(root, o.update)
    print("\n".join(f"wrote {root / path}" for path in written) or f"{root}: the glue is up to date")
    for line in missing_glue(root):
        print(f"to do: {line}")
    print(f"next: meson setup {root / 'build'} {root} -Dimage=YOUR-DISK, then meson test -C {root / 'build'}")
    return 0


def cmd_guest_files(o: argparse.Namespace) -> int:
    from harness.guest.files import install_guest_files

    root = Path(o.root)
    if not root.is_dir():
        raise HarnessError(
            f"{root} is not a directory",
            "give the root tree of the image being built (a directory that becomes its /)",
        )
    for path in install_guest_files(root):
        print(path)
    return 0


def cmd_check_image(o: argparse.Namespace) -> int:
    from harness.image.doctor import report

    text, ready = report(image_parts_of(o))
    print(text, flush=True)
    if not ready or not o.boot:
        return 0 if ready else 1
    print(
        "booting it once with the contract test (a credential and the command line must arrive)", flush=True
    )
    status: int = o.boot_contract(o)
    return status


# The contract test of check-image --boot: what every test relies on, checked in the guest.
CONTRACT_COMMAND = (
    '/bin/sh -c \'test "$$(cat $$CREDENTIALS_DIRECTORY/contract)" = kept'
    " && grep -q harness.contract=1 /proc/cmdline'"
)


def add_project_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    boot_contract: Callable[[argparse.Namespace], int],
) -> None:
    """The commands for a repository and an image of the user's own: init, check-image
    (`boot_contract` boots the image once, for --boot), guest-files."""
    init_cmd = sub.add_parser("init", help="write the meson glue into a repository", allow_abbrev=False)
    init_cmd.add_argument("directory", nargs="?", default=".", help="the repository (default: here)")
    init_cmd.add_argument(
        "--update", action="store_true", help="refresh test/meson.build and test/declaration.in"
    )
    init_cmd.set_defaults(func=cmd_init)
    check_image = sub.add_parser(
        "check-image",
        help="say, without booting it, what the harness needs of an image and what it lacks",
        allow_abbrev=False,
    )
    add_image_options(check_image, disk_positional=True)
    check_image.add_argument(
        "--boot", action="store_true", help="then boot it once (QEMU) through a built-in contract test"
    )
    check_image.set_defaults(func=cmd_check_image, boot_contract=boot_contract)
    guest_files = sub.add_parser(
        "guest-files",
        help="install what an image needs from the harness into its root tree, during the image's build",
        allow_abbrev=False,
    )
    guest_files.add_argument("root", help="the image's root directory")
    guest_files.set_defaults(func=cmd_guest_files)
