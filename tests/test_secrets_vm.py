"""End to end: a credential's value reaches the guest and nothing else. A test declares
a secret from a file outside the tree, one from the environment and a literal credential,
prints all three and fails (so everything is kept: console, whole journal, report). No
value may show up in `ps` while it runs or in anything the run leaves in the build
directory, with two exceptions that are meson's and documented: the literal one is in the
declaration meson wrote from meson.build, and the environment's one is in meson's
testlog.txt/json, where meson writes its whole environment."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.e2e import IMAGE, SNAPSHOTS, meson_project, meson_setup

pytestmark = pytest.mark.vm
SECRET = "tok-7f3a9c2e55d1"
FROM_ENV = "env-5c0d7e21aa93"
LITERAL = "literal-b81e4d09"
VALUES = (SECRET, FROM_ENV, LITERAL)
NAME = "TEST-10-SECRETS"


def watch_ps(seen: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        seen += [line for line in out.splitlines() if any(v in line for v in VALUES)]
        time.sleep(0.2)


def test_credential_values_reach_the_guest_and_no_log(tmp_path):
    if not IMAGE.is_file():
        pytest.fail(f"no image at {IMAGE}: build it with 'meson compile -C build mkosi'")
    project = meson_project(tmp_path / "project")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    test = project / "test" / NAME
    test.mkdir()
    (test / "meson.build").write_text(f"""\
integration_tests += [integration_test_template + {{
        'name' : fs.name(meson.current_source_dir()),
        'credentials' : ['app.token=@{secret_file}', 'app.env=env:APP_ENV', 'app.literal={LITERAL}'],
        'configuration' : {{'command' : '/bin/sh -c "cd $$CREDENTIALS_DIRECTORY; cat app.token app.env app.literal; exit 1"'}},
}}]
""")
    build, env = meson_setup(project, HARNESS_SNAPSHOT_DIR=str(SNAPSHOTS))
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_ps, args=(seen, stop))
    watcher.start()
    try:
        result = subprocess.run(
            ["meson", "test", "-C", str(build), NAME],
            cwd=project,
            env=dict(env, APP_ENV=FROM_ENV),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        stop.set()
        watcher.join()
    print(result.stdout, result.stderr)
    assert result.returncode != 0 and "FAIL" in result.stdout
    logs = build / "integration-tests" / NAME
    console = (logs / "console.log").read_text(errors="replace")
    assert "***" in console, "the guest did not print the credentials (or they were not masked)"
    assert seen == [], "a value showed in ps"
    leaks = []
    for path in build.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        meson_env_log = path.name in ("testlog.txt", "testlog.json")
        for value in VALUES:
            allowed = (value == LITERAL and path.suffix == ".declaration") or (
                value == FROM_ENV and meson_env_log
            )
            if value.encode() in data and not allowed:
                leaks.append(f"{path.relative_to(build)}: {value}")
    assert leaks == []
    assert SECRET.encode() not in (build / "test" / f"{NAME}.declaration").read_bytes()
    assert console.count("***") >= 3
