"""End to end against a real LAVA (tools/lava-local start): `meson test` through the lava
backend on a project with TEST-01-BASIC and a test whose second subtest fails on purpose.
Each becomes a LAVA job; the verdicts, the subtests (in the harness's records and in
LAVA's own results), the console in the report and the job's URL are checked.

Marked `lava` as well as `vm`: CI runs these in the stage that starts LAVA
(`pytest -m lava`), and the other end-to-end tests without it (`-m "vm and not lava"`).
LAVA_URL and LAVA_TOKEN_FILE say where the lab is (tools/lava-local's defaults).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import (
    IMAGE,
    ROOT,
    add_test_with_a_failing_subtest,
    free_port,
    harness_leftovers,
    meson_project,
    meson_setup,
    meson_test_suite,
    run_wrapper,
    start_wrapper,
    wait_until,
    wrapper_env,
)

pytestmark = [pytest.mark.vm, pytest.mark.lava]

LAVA_URL = os.environ.get("LAVA_URL", "http://127.0.0.1:8000")
TOKEN_FILE = Path(os.environ.get("LAVA_TOKEN_FILE", "/var/lib/harness-lava/token"))
FAILING = "TEST-90-FAILING-SUBTEST"


def lava_api(path: str, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{LAVA_URL}/api/v0.2/{path}", headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        answer: dict[str, Any] = json.load(r)
        return answer


@pytest.fixture(scope="module")
def token():
    try:
        token = TOKEN_FILE.read_text().strip()
        lava_api("system/version/", token)
    except OSError as e:
        pytest.fail(f"no LAVA at {LAVA_URL} ({e}): start one with 'tools/lava-local start'")
    return token


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory, token):
    if not IMAGE.is_file():
        pytest.fail(f"no image at {IMAGE}: build it with 'meson compile -C build mkosi'")
    project = meson_project(tmp_path_factory.mktemp("project"))
    shutil.copytree(ROOT / "test" / "TEST-01-BASIC", project / "test" / "TEST-01-BASIC")
    add_test_with_a_failing_subtest(project, FAILING)
    # The token from its file, as README says: meson writes the environment into its logs.
    build, env = meson_setup(
        project, "-Dtest-backend=lava", f"-Dlava-url={LAVA_URL}", HARNESS_LAVA_TOKEN_FILE=str(TOKEN_FILE)
    )
    env.pop("HARNESS_LAVA_TOKEN", None)
    return meson_test_suite(project, build, env), build


def record(build: Path, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((build / "integration-tests" / name / "result.json").read_text())
    return result


def lava_env(token: str, **extra: str) -> dict[str, str]:
    """The wrapper's environment for the lava backend and the lab here."""
    return dict(
        wrapper_env(), HARNESS_BACKEND="lava", HARNESS_LAVA_URL=LAVA_URL, HARNESS_LAVA_TOKEN=token, **extra
    )


@contextlib.contextmanager
def web_server(directory: Path) -> Iterator[str]:
    """python's http.server serving `directory` on a free port; its URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_verdicts_and_subtests(lab_run):
    result, build = lab_run
    assert "Ok:                1" in result.stdout and "Fail:              1" in result.stdout
    passing, failing = record(build, "TEST-01-BASIC"), record(build, FAILING)
    assert (passing["backend"], passing["status"]) == ("lava", "pass")
    assert failing["status"] == "fail"
    assert [(s["name"], s["status"]) for s in failing["subtests"]] == [
        ("testcase_1_passes", "pass"),
        ("testcase_2_fails_on_purpose", "fail"),
        ("testcase_3_skips", "skip"),
    ]


def test_the_token_is_in_no_file_of_the_build_directory_nor_in_the_output(lab_run, token):
    result, build = lab_run
    assert token not in result.stdout + result.stderr
    leaks = [p for p in build.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert not leaks, f"the LAVA token is in {leaks}"


def test_each_test_is_a_lava_job_with_its_subtests(lab_run, token):
    _, build = lab_run
    for name in ("TEST-01-BASIC", FAILING):
        url = record(build, name)["job_url"]
        assert url.startswith(f"{LAVA_URL}/scheduler/job/")
        job_id = url.rsplit("/", 1)[1]
        with urllib.request.urlopen(url, timeout=30) as page:  # the web UI's page, public
            assert page.status == 200 and f"{job_id}" in page.read().decode(errors="replace")

        # The wrapper may be done before the lab has seen the job end (the worker's ping).
        def finished(path: str = f"jobs/{job_id}/") -> bool:
            return bool(lava_api(path, token)["state"] == "Finished")

        wait_until(finished, 60, "job unfinished")
        job = lava_api(f"jobs/{job_id}/", token)
        assert job["health"] == "Complete"
        written = (build / "integration-tests" / name / "lava-job.yaml").read_text()
        assert yaml.safe_load(job["definition"]) == yaml.safe_load(written)  # LAVA sorts the keys
        cases = {
            r["name"]: r["result"] for r in lava_api(f"jobs/{job_id}/tests/?limit=100", token)["results"]
        }
        assert cases[name.lower().replace("-", "_")] == ("pass" if name == "TEST-01-BASIC" else "fail")
    assert {k: v for k, v in cases.items() if k.startswith("testcase_")} == {
        "testcase_1_passes": "pass",
        "testcase_2_fails_on_purpose": "fail",
        "testcase_3_skips": "skip",
    }


def test_the_job_log_is_in_the_console_log_and_the_report(lab_run):
    result, build = lab_run
    console = (build / "integration-tests" / FAILING / "console.log").read_text(errors="replace")
    assert "this subtest fails on purpose" in console
    report = (build / "meson-logs" / "integration-tests-report.html").read_text()
    url = record(build, FAILING)["job_url"]
    assert f'href="{url}"' in report and "this subtest fails on purpose" in report
    assert (
        f"LAVA job {url.rsplit('/', 1)[1]}: {url}"
        in result.stdout + (build / "meson-logs" / "testlog.txt").read_text()
    )


def test_lava_job_prints_what_the_backend_submits(lab_run):
    _, build = lab_run
    printed = subprocess.run(
        [sys.executable, "-m", "harness", "lava-job", "-C", str(build), FAILING],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        check=True,
    )
    image = build / "integration-tests" / FAILING / "board.raw"
    assert f"url: file://{image}" in printed.stdout and "monitors:" in printed.stdout
    assert oct(image.stat().st_mode & 0o777) == "0o600"  # it holds the test's credentials
    image.unlink()


def test_ctrl_c_cancels_the_job_and_leaves_nothing(image, tmp_path, token):
    env = lava_env(token)
    name = "TEST-93-INTERRUPTED"
    wrapper = start_wrapper(image, tmp_path, name, "--command=/bin/sleep 600", env=env)
    job_id = ""
    assert wrapper.stdout is not None
    for line in wrapper.stdout:
        print(line, end="")
        if f"{name}: LAVA job " in line:
            job_id = line.split("LAVA job ")[1].split(":")[0]
            break
    assert job_id, "the wrapper never said which job it submitted"
    wait_until(lambda: lava_api(f"jobs/{job_id}/", token)["state"] == "Running", 300, "the job never started")
    wrapper.send_signal(signal.SIGINT)
    assert wrapper.wait(timeout=60) == 130
    wait_until(
        lambda: lava_api(f"jobs/{job_id}/", token)["health"] == "Canceled", 120, "the job was not canceled"
    )
    assert harness_leftovers(name) == ([], [])


def test_a_lab_elsewhere_fetches_the_image_from_a_web_server(image, tmp_path, token):
    """HARNESS_LAVA_IMAGE_DIR and _URL: the image goes into a directory a web server serves
    (python's http.server here), under a name nobody can guess, and is gone after the job."""
    served = tmp_path / "served"
    served.mkdir()
    with web_server(served) as url:
        env = lava_env(token, HARNESS_LAVA_IMAGE_DIR=str(served), HARNESS_LAVA_IMAGE_URL=url)
        result = run_wrapper(image, tmp_path, "TEST-94-FETCHED", "--command=/bin/true", env=env)
    assert result.returncode == 0
    job = yaml.safe_load((tmp_path / "logs" / "lava-job.yaml").read_text())
    fetched = job["actions"][0]["deploy"]["images"]["disk"]["url"]
    assert re.fullmatch(rf"{re.escape(url)}[\w-]{{20,}}/board\.raw", fetched)
    assert list(served.iterdir()) == []


def test_a_job_the_lab_cannot_run_is_an_error(image, tmp_path, token):
    """The lab cannot fetch the image (the URL names a directory the web server does not
    serve: 404): LAVA ends the job Incomplete, and the test is an ERROR that names the job
    and LAVA's reason, never a FAIL."""
    served, elsewhere = tmp_path / "served", tmp_path / "elsewhere"
    served.mkdir()
    elsewhere.mkdir()
    with web_server(elsewhere) as url:
        env = lava_env(token, HARNESS_LAVA_IMAGE_DIR=str(served), HARNESS_LAVA_IMAGE_URL=url)
        result = run_wrapper(image, tmp_path, "TEST-95-UNFETCHABLE", "--command=/bin/true", env=env)
    assert result.returncode == 99
    found = json.loads((tmp_path / "logs" / "result.json").read_text())
    assert found["status"] == "error" and found["job_url"]
    assert re.match(
        r"LAVA job \d+ ended Incomplete: Job: Invalid job data: .*Resource unavailable.*404", found["reason"]
    )
    assert list(served.iterdir()) == []
