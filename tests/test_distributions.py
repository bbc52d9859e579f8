"""One test tree, many distributions: every distribution and release the README promises
is a configuration mkosi accepts, and the CI matrix that runs them uses the README's own
commands. (The matrix runs on GitHub, not here: this is what keeps it honest.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "integration-tests.yml"
SUPPORTED = {
    ("debian", "bookworm"),
    ("debian", "trixie"),
    ("debian", "testing"),
    ("ubuntu", "noble"),
    ("fedora", "42"),
    ("fedora", "rawhide"),
    ("arch", "rolling"),
    ("opensuse", "tumbleweed"),
    ("centos", "9"),
    ("centos", "10"),
}
# Built and booted under emulation on an x86-64 runner (binfmt_misc, qemu-system-aarch64).
ARM64 = {("debian", "bookworm"), ("debian", "trixie"), ("ubuntu", "noble"), ("fedora", "42")}


def matrix() -> list[dict[str, str]]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["integration-tests"]
    return [{k: str(v) for k, v in row.items()} for row in job["strategy"]["matrix"]["include"]]


def run_steps() -> str:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["integration-tests"]
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_the_matrix_is_what_the_readme_promises():
    rows = {(row["distribution"], row["release"], row["architecture"]) for row in matrix()}
    assert rows == {(*r, "x86-64") for r in SUPPORTED} | {(*r, "arm64") for r in ARM64}
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["integration-tests"]
    assert job["strategy"]["fail-fast"] is False
    readme = (ROOT / "README.md").read_text()
    for distribution, release in SUPPORTED:
        assert f"{distribution} {release}" in readme, "the README's CI matrix section lists it"
    for distribution, release in ARM64:
        assert f"{distribution} {release} (arm64 too)" in readme, "the README says it runs on arm64"


def test_the_steps_are_the_readmes_commands():
    readme = (ROOT / "README.md").read_text()
    steps = run_steps()
    # The set-up and the main job; the matrix runs the unit tests too, not the VM tests
    # of the harness itself (those run on our own CI).
    section = readme[readme.index("## Set up, run, test") : readme.index("The harness's own tests")]
    commands = [
        line.strip().split("  #")[0].strip()
        for line in section.splitlines()
        if line.startswith("    ") and line.strip() and not line.strip().startswith("#")
    ]
    assert commands, "no commands found in the README"
    for command in commands:
        # The matrix adds the distribution to meson setup; everything else is verbatim.
        matrix_options = (
            " -Dimage-distribution=${{ matrix.distribution }} -Dimage-release=${{ matrix.release }}"
            " -Dimage-architecture=${{ matrix.architecture }}"
        )
        wanted = {command + matrix_options} if command.startswith("meson setup") else {command}
        assert wanted & {line.strip() for line in steps.splitlines()}, command


def test_failed_jobs_keep_their_logs():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["integration-tests"]
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "failure()"
    paths = upload["with"]["path"]
    for kept in ("meson-logs", "console", "journal", "result.json"):
        assert kept in paths


@pytest.mark.skipif(shutil.which("mkosi") is None, reason="mkosi is not installed (tools/setup installs it)")
@pytest.mark.parametrize(
    "distribution, release, architecture",
    sorted([(*r, "x86-64") for r in SUPPORTED] + [(*r, "arm64") for r in ARM64]),
)
def test_mkosi_accepts_the_configuration(distribution, release, architecture):
    options = ["--distribution", distribution, "--release", release, "--architecture", architecture]
    result = subprocess.run(
        ["mkosi", "--directory", str(ROOT), *options, "summary"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    images = dict(
        (block.splitlines()[0].strip(), block) for block in re.split(r"(?m)^IMAGE: ", result.stdout)[1:]
    )
    assert set(images) == {"initrd", "default"}, "the test image and its initrd from mkosi.images/"
    image, initrd = images["default"], images["initrd"]
    assert re.search(rf"Distribution: {distribution}\b", image)
    assert re.search(rf"Release: {release}\b", image)
    assert re.search(rf"Architecture: {architecture}\b", image)
    if architecture == "arm64":  # QEMU's virt machine's UART, in a UEFI boot's UKI
        assert "console=ttyAMA0" in image and "console=ttyS0" not in image
    packages = image[image.index("Packages:") :].split("\n\n")[0]
    assert "systemd" in packages and re.search(r"(?<![\w-])(linux|kernel)", packages), (
        "no kernel in the image"
    )
    assert re.search(r"Dependencies: initrd\b", image)
    assert re.search(r"Initrds: \S*/initrd\.cpio\.zst\b", image), "the image boots the initrd built first"
    assert re.search(r"Output Format: cpio\b", initrd)
    initrd_packages = initrd[initrd.index("Packages:") :].split("\n\n")[0]
    assert "systemd" in initrd_packages
    assert "udev" in initrd_packages or distribution == "arch"  # Arch's systemd carries udev
