"""The meson glue `os-harness init` writes: the same files this repository runs on, a
version the wrapper checks, and a repository of one's own that meson sets up."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.project.repository import GLUE_DIR, GLUE_VERSION, HARNESS_OWNED, check_glue, init

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", HARNESS_OWNED)
def test_this_repository_runs_on_the_glue_it_ships(path):
    assert (ROOT / path).read_bytes() == (GLUE_DIR / path).read_bytes()


def test_every_glue_option_is_in_this_repositorys_options():
    ours = (ROOT / "meson_options.txt").read_text()
    for option in re.findall(r"(?ms)^option\(.*?\)$", (GLUE_DIR / "meson_options.txt").read_text()):
        assert option in ours


def test_the_glue_says_the_version_the_wrapper_expects():
    text = (GLUE_DIR / "test" / "meson.build").read_text()
    version = re.search(r"(?m)^harness_glue_version = (\d+)$", text)
    assert version and version.group(1) == str(GLUE_VERSION)


def test_a_glue_of_another_version_is_refused_with_the_command_that_refreshes_it():
    check_glue(None)
    check_glue(GLUE_VERSION)
    with pytest.raises(HarnessError, match=f"is version {GLUE_VERSION + 1}, and this os-harness needs") as e:
        check_glue(GLUE_VERSION + 1)
    assert "os-harness init --update" in e.value.fix


def test_init_writes_a_repository_and_update_refreshes_only_the_harnesss_files(tmp_path):
    repo = tmp_path / "my-os"
    written = init(repo, update=False)
    assert "test/meson.build" in written and "test/TEST-01-BOOTS/test.sh" in written
    assert "project('my-os'" in (repo / "meson.build").read_text()
    assert (repo / "test/TEST-01-BOOTS/test.sh").stat().st_mode & 0o111
    assert init(repo, update=False) == []
    (repo / "meson.build").write_text("# mine\n")
    (repo / "test" / "meson.build").write_text("# an old glue\n")
    with pytest.raises(HarnessError, match="is not this os-harness's glue"):
        init(repo, update=False)
    assert init(repo, update=True) == ["test/meson.build", "test/declaration.in"]
    assert (repo / "meson.build").read_text() == "# mine\n"
    assert (repo / "test" / "meson.build").read_bytes() == (GLUE_DIR / "test" / "meson.build").read_bytes()


def test_meson_sets_up_a_repository_init_wrote(tmp_path):
    repo = tmp_path / "my-os"
    init(repo, update=False)
    (tmp_path / "disk.img").write_bytes(b"")
    done = subprocess.run(
        ["meson", "setup", str(tmp_path / "build"), str(repo), f"-Dimage={tmp_path / 'disk.img'}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tests = subprocess.run(
        ["meson", "test", "-C", str(tmp_path / "build"), "--list"], capture_output=True, text=True
    ).stdout
    assert "TEST-01-BOOTS" in tests


def test_meson_setup_without_an_image_says_how_to_give_one(tmp_path):
    repo = tmp_path / "my-os"
    init(repo, update=False)
    done = subprocess.run(
        ["meson", "setup", str(tmp_path / "build"), str(repo)], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "give your disk with -Dimage=PATH" in done.stdout + done.stderr


def run_setup(tmp_path: Path, repo: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["meson", "setup", str(tmp_path / "build"), str(repo), *options], capture_output=True, text=True
    )


def test_meson_setup_refuses_a_relative_or_missing_image_at_once(tmp_path):
    repo = tmp_path / "my-os"
    init(repo, update=False)
    done = run_setup(tmp_path, repo, "-Dimage=my.img")
    assert "-Dimage=my.img: give an absolute path (-Dimage=$PWD/my.img)" in done.stdout + done.stderr
    done = run_setup(tmp_path, repo, f"-Dimage={tmp_path / 'nope.img'}")
    assert "there is no such file" in done.stdout + done.stderr


def test_a_repository_with_no_test_yet_sets_up(tmp_path):
    repo = tmp_path / "my-os"
    init(repo, update=False)
    for f in (repo / "test" / "TEST-01-BOOTS").iterdir():
        f.unlink()
    (repo / "test" / "TEST-01-BOOTS").rmdir()
    (repo / "test" / "TEST-02-NOT-A-DIRECTORY").write_text("")
    (tmp_path / "disk.img").write_bytes(b"")
    done = run_setup(tmp_path, repo, f"-Dimage={tmp_path / 'disk.img'}")
    assert done.returncode == 0, done.stdout + done.stderr


def test_init_into_a_repository_with_its_own_meson_files_says_what_to_add(tmp_path):
    from harness.project.repository import missing_glue

    repo = tmp_path / "my-os"
    repo.mkdir()
    (repo / "meson.build").write_text("project('my-os')\n")
    (repo / "meson.options").write_text("option('image', type: 'string', value: '')\n")
    init(repo, update=False)
    lacking = missing_glue(repo)
    assert "has no subdir('test'): add it" in lacking[0]
    assert "meson.options lacks the harness's options kernel, initrd" in lacking[1]
    (repo / "meson.build").write_text("project('my-os')\nsubdir('test')\n")
    (repo / "meson.options").unlink()
    (repo / "meson_options.txt").unlink()
    init(repo, update=False)
    assert missing_glue(repo) == []
