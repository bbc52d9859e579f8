"""What the end-to-end tests share: where the image and the snapshots are, how they
start the wrapper (as meson does, on either backend), and how they look for leftovers.
The fixtures built on these are in conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = Path(os.environ.get("HARNESS_IMAGE", ROOT / "build" / "mkosi.output" / "image.raw"))
# The booted snapshot of the image, shared with `meson test` (same image, same harness).
SNAPSHOTS = Path(os.environ.get("HARNESS_SNAPSHOT_DIR", ROOT / "build" / "integration-tests" / "snapshots"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wrapper_cmd(image: Path, tmp_path: Path, name: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        f"--name={name}",
        f"--test-dir={tmp_path}",
        f"--image={image}",
        f"--log-dir={tmp_path / 'logs'}",
        *args,
    ]


def wrapper_env(boot: str = "auto", snapshots: Path = SNAPSHOTS) -> dict[str, str]:
    """`boot`: auto (the fast path where the test is eligible) or cold (HARNESS_COLD_BOOT=1)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HARNESS_INTERACTIVE="0",
        HARNESS_SNAPSHOT_DIR=str(snapshots),
        HARNESS_COLD_BOOT="1" if boot == "cold" else "0",
    )
    env.pop("HARNESS_SKIP", None)
    return env


def run_wrapper(
    image: Path,
    tmp_path: Path,
    name: str,
    *args: str,
    boot: str = "auto",
    snapshots: Path = SNAPSHOTS,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The wrapper, run as meson runs it; `env`: another backend's (board_env)."""
    result = subprocess.run(
        wrapper_cmd(image, tmp_path, name, *args),
        cwd=ROOT,
        env=env or wrapper_env(boot, snapshots),
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout, result.stderr)
    return result


def start_wrapper(
    image: Path, tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """The wrapper as run_wrapper runs it, in the background, its output in a pipe."""
    return subprocess.Popen(
        wrapper_cmd(image, tmp_path, name, *args),
        cwd=ROOT,
        env=env or wrapper_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(condition: Callable[[], object], timeout: float, failure: str, poll: float = 0.5) -> None:
    """Poll `condition` until it holds; after `timeout` seconds the test fails with `failure`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(poll)


def wait_for_console(console: Path, marker: str, timeout: float = 300) -> None:
    wait_until(
        lambda: console.is_file() and marker in console.read_text(errors="replace"),
        timeout,
        f"{marker!r} never appeared on the console",
    )


def boot_path(tmp_path: Path) -> str:
    """How the run's VM came up, from its result.json: cold or snapshot."""
    boot: str = json.loads((tmp_path / "logs" / "result.json").read_text())["boot"]
    return boot


def harness_leftovers(name: str) -> tuple[list[str], list[Path]]:
    """The processes and private directories of this session's wrappers for test NAME
    (conftest's wrapper_tmpdir gives them a TMPDIR of their own)."""
    tmp = Path(os.environ["TMPDIR"])
    pgrep = subprocess.run(["pgrep", "-af", f"{tmp}/harness-{name}-"], capture_output=True, text=True).stdout
    procs = [p for p in pgrep.splitlines() if "pgrep" not in p]
    return procs, list(tmp.glob(f"harness-{name}-*"))


TOKEN = "e2e-token"  # the virtual worker's, in the end-to-end tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WorkerProcess(subprocess.Popen[bytes]):
    """A virtual worker's process, and where it listens and logs."""

    url: str
    port: int
    log: Path


@contextlib.contextmanager
def running_worker(
    tmp_path: Path, *options: str, listen: str = "127.0.0.1:{port}", token: str | None = TOKEN
) -> Iterator[WorkerProcess]:
    """A virtual worker process on a free port (`listen` says where; its `url`, `port` and
    `log` are set on it), its state in tmp_path/worker unless `options` say otherwise, its
    token TOKEN (None: it makes its own); stopped afterwards, and checked to have stopped
    its board too."""
    port = free_port()
    log_path = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_AUTOKIT_TOKEN"}
    if token is not None:
        env["HARNESS_AUTOKIT_TOKEN"] = token
    state = (
        [] if any(o.startswith("--state-dir=") for o in options) else [f"--state-dir={tmp_path / 'worker'}"]
    )
    with log_path.open("w") as log:
        proc = WorkerProcess(
            [
                sys.executable,
                "-m",
                "harness.backends.autokit.virtual_worker",
                f"--listen={listen.format(port=port)}",
                *state,
                *options,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env, PYTHONPATH=str(ROOT)),
        )
        try:
            wait_until(
                lambda: "listening" in log_path.read_text(), 20, "the virtual worker did not start", 0.1
            )
            proc.url = f"http://127.0.0.1:{port}"
            proc.port = port
            proc.log = log_path
            yield proc
        finally:
            stop_worker(proc, log_path)
    board = subprocess.run(["pgrep", "-af", str(tmp_path / "worker")], capture_output=True, text=True).stdout
    assert "qemu-system" not in board, "the virtual worker left its board running"


def stop_worker(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM, as a service manager stops it; one that does not exit within 30 s has its
    stacks printed to its log (SIGUSR1), is killed, and fails the test with that log."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1)
        proc.kill()
        proc.wait()
        pytest.fail(f"the virtual worker ignored SIGTERM for 30 s; its log:\n{log_path.read_text()[-6000:]}")


def board_env(url: str) -> dict[str, str]:
    """The wrapper's environment for the autokit backend and the worker at `url`."""
    return dict(
        wrapper_env(), HARNESS_BACKEND="autokit", HARNESS_AUTOKIT_WORKER=url, HARNESS_AUTOKIT_TOKEN=TOKEN
    )


def run_on_board(
    image: Path, tmp_path: Path, url: str, name: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_wrapper(image, tmp_path, name, *args, env=board_env(url))


def meson_project(where: Path) -> Path:
    """A project of its own with this harness and no tests yet: tests go in where/test."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("meson.build", "meson_options.txt"):
        shutil.copy(ROOT / name, where / name)
    shutil.copytree(ROOT / "harness", where / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    (where / "test").mkdir()
    for name in ("meson.build", "declaration.in"):
        shutil.copy(ROOT / "test" / name, where / "test" / name)
    return where


def meson_setup(project: Path, *options: str, **env: str) -> tuple[Path, dict[str, str]]:
    """`meson setup build` in `project` against the image built here, with `options`; the
    build directory, and the environment to run `meson test` in (HARNESS_* switches a user
    may have set are dropped, `env` added)."""
    build = project / "build"
    run_env = dict(os.environ, HARNESS_INTERACTIVE="0", **env)
    run_env.pop("HARNESS_SKIP", None)
    subprocess.run(
        [
            "meson",
            "setup",
            str(build),
            "-Dintegration-tests=true",
            f"-Dmkosi-output={IMAGE.parent}",
            *options,
        ],
        cwd=project,
        env=run_env,
        check=True,
        capture_output=True,
    )
    return build, run_env


CASES_WITH_A_FAILURE = """\
. "$HARNESS_TESTCASES_LIB"
testcase_1_passes() { echo "all is well"; }
testcase_2_fails_on_purpose() { echo "this subtest fails on purpose"; test -e /nonexistent; }
testcase_3_skips() { harness_skip "nothing to do here"; }
run_testcases
"""


def add_test_with_a_failing_subtest(project: Path, name: str, firmware: str = "linux") -> None:
    """A test in `project` whose payload has a passing, a failing and a skipping subtest;
    sent as a credential, so the shared image needs no rebuild."""
    test = project / "test" / name
    test.mkdir()
    (test / "cases.sh").write_text(CASES_WITH_A_FAILURE)
    (test / "meson.build").write_text(f"""\
integration_tests += [integration_test_template + {{
        'name' : fs.name(meson.current_source_dir()),
        'timeout' : 120,
        'firmware' : '{firmware}',
        'credentials' : ['cases.sh=@cases.sh'],
        'configuration' : {{'command' : '/bin/bash %d/cases.sh'}},
}}]
""")


def meson_test_suite(
    project: Path, build: Path, env: dict[str, str], *tests: str
) -> subprocess.CompletedProcess[str]:
    """`meson test --suite integration-tests` on the project's build directory (only
    `tests`, where named), printed."""
    result = subprocess.run(
        ["meson", "test", "-C", str(build), "--suite", "integration-tests", "--print-errorlogs", *tests],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(result.stdout, result.stderr)
    return result
