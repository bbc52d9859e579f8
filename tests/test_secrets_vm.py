"""End to end: a credential's value reaches the guest and nothing else. A test declares
one secret from the environment and one literal credential, prints both and fails (so
everything is kept: console, whole journal, report); neither value may show up in `ps`
while it runs, in meson's logs, or in anything the run leaves in the build directory
(the literal one is, by its nature, in the declaration meson wrote from meson.build)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from e2e import IMAGE, SNAPSHOTS, meson_project

pytestmark = pytest.mark.vm
SECRET = "tok-7f3a9c2e55d1"
LITERAL = "literal-b81e4d09"
NAME = "TEST-10-SECRETS"


def watch_ps(seen: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        seen += [line for line in out.splitlines() if SECRET in line or LITERAL in line]
        time.sleep(0.2)


def test_credential_values_reach_the_guest_and_no_log(tmp_path):
    if not IMAGE.is_file():
        pytest.fail(f"no image at {IMAGE}: build it with 'meson compile -C build mkosi'")
    project = meson_project(tmp_path / "project")
    test = project / "test" / NAME
    test.mkdir()
    (test / "meson.build").write_text(f"""\
integration_tests += [integration_test_template + {{
        'name' : fs.name(meson.current_source_dir()),
        'credentials' : ['app.token=env:APP_TOKEN', 'app.literal={LITERAL}'],
        'configuration' : {{'command' : '/bin/sh -c "cat $$CREDENTIALS_DIRECTORY/app.token; echo; cat $$CREDENTIALS_DIRECTORY/app.literal; echo; exit 1"'}},
}}]
""")
    build = project / "build"
    env = dict(os.environ, HARNESS_INTERACTIVE="0", HARNESS_SNAPSHOT_DIR=str(SNAPSHOTS))
    env.pop("HARNESS_SKIP", None)
    subprocess.run(
        ["meson", "setup", str(build), "-Dintegration-tests=true", f"-Dmkosi-output={IMAGE.parent}"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_ps, args=(seen, stop))
    watcher.start()
    try:
        result = subprocess.run(
            ["meson", "test", "-C", str(build), NAME],
            cwd=project,
            env=dict(env, APP_TOKEN=SECRET),
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
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if SECRET.encode() in data or (LITERAL.encode() in data and path.suffix != ".declaration"):
                leaks.append(str(path.relative_to(build)))
    assert leaks == []
    assert SECRET.encode() not in (build / "test" / f"{NAME}.declaration").read_bytes()
