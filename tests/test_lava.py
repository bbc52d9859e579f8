"""The LAVA backend without a lab: the job definition, the client against a stub of LAVA's
REST API, and how a followed job ends (LavaMachine with a scripted lab). The same
against a real LAVA instance: test_lava_vm.py."""

import json
import re
import subprocess
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from harness.backends.lava import job as lava_job
from harness.backends.lava.backend import (
    ImageServer,
    LavaBackend,
    LavaMachine,
    image_server,
    offered,
)
from harness.backends.lava.client import JobState, LabError, LavaClient, LogLine
from harness.boot.machine import Ending, EndingKind
from harness.boot.plan import CONSOLE_LIMIT
from harness.boot.watch import power_off_after, watch
from harness.errors import HarnessError
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.guest.units import render_test_unit
from harness.settings import Options, Settings
from harness.verdict.notify import GuestReport
from harness.verdict.results import Status, classify
from tests.helpers import declaration

URL = "http://lava.invalid"


def console(*lines: str) -> list[LogLine]:
    return [LogLine("target", line) for line in lines]


def said(*pairs: str) -> list[str]:
    return [f"{CONSOLE_CHANNEL.prefix}{p}" for p in pairs]


PASSING = said(
    "READY=1",
    "X_HARNESS_TESTCASE=pass 12 testcase_one",
    "X_HARNESS_SERVICE_RESULT=success",
    "X_HARNESS_EXIT_CODE=exited",
    "X_HARNESS_EXIT_STATUS=0",
    "X_HARNESS_TEST=pass 0 TEST-99-LAB",
    "X_HARNESS_DONE=1",
)


class ScriptedLab(LavaClient):
    """A lab whose job goes through `states` (one a poll; the last one stays) while its
    log grows by `log` lines, a few at a time: the client's calls answered without a server."""

    def __init__(self, states: Iterable[JobState], log: Iterable[LogLine] = (), per_poll: int = 3) -> None:
        self.states = list(states)
        self.lines = [LogLine("info", "start: 0 validate"), *log]
        self.per_poll = per_poll
        self.polls = 0
        self.cancelled: list[int] = []

    def job_url(self, job_id: int) -> str:
        return f"{URL}/scheduler/job/{job_id}"

    def job(self, job_id: int) -> JobState:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        if self.cancelled and not state.finished:
            state = JobState(job_id, "Finished", "Canceled", "qemu-01", "")
        return state

    def log(self, job_id: int, start: int) -> list[LogLine]:
        return self.lines[start : min(len(self.lines), self.polls * self.per_poll)]

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    def job_error(self, job_id: int) -> str:
        return "Infrastructure: the device did not power on"


def state(name: str, health: str = "Unknown", comment: str = "") -> JobState:
    return JobState(7, name, health, "qemu-01", comment)


RUNNING, COMPLETE = state("Running"), state("Finished", "Complete")


def follow(
    lab: LavaClient, tmp_path: Path, timeout: float = 60.0, console_limit: int = CONSOLE_LIMIT, **kw: float
) -> tuple[LavaMachine, Ending, GuestReport]:
    """The machine watched as the flow watches it (wrapper.run_machine)."""
    machine = LavaMachine(lab, 7, tmp_path, poll=0, console_limit=console_limit, **kw)
    ending = watch(machine, timeout, console_limit)
    power_off_after(machine, ending)
    return machine, ending, machine.collect()


def test_a_passing_job_is_the_guest_s_verdict(tmp_path):
    lab = ScriptedLab([state("Submitted"), RUNNING, RUNNING, RUNNING, COMPLETE], console(*PASSING))
    machine, ending, report = follow(lab, tmp_path)
    assert ending.kind == EndingKind.EXITED
    assert classify("TEST-99-LAB", 0, 60, ending, report).status == Status.PASS
    assert (tmp_path / "console.log").read_text() == "".join(f"{line}\n" for line in PASSING)
    assert machine.job_url == f"{URL}/scheduler/job/7"
    assert not lab.cancelled


def test_the_guest_s_failure_is_a_fail(tmp_path):
    lines = said("READY=1", "X_HARNESS_SERVICE_RESULT=exit-code", "X_HARNESS_EXIT_CODE=exited")
    lines += said("X_HARNESS_EXIT_STATUS=3", "X_HARNESS_DONE=1")
    lab = ScriptedLab([RUNNING, RUNNING, COMPLETE], console(*lines))
    _, ending, report = follow(lab, tmp_path)
    outcome = classify("TEST-99-LAB", 0, 60, ending, report)
    assert (outcome.status, outcome.cause) == (Status.FAIL, "exit-status")


def test_an_incomplete_job_without_the_guest_s_word_is_an_error(tmp_path):
    incomplete = state("Finished", "Incomplete", "lava test monitoring has timed out")
    lab = ScriptedLab([RUNNING, incomplete], console("[    0.000000] Linux version 6.12"))
    _, ending, report = follow(lab, tmp_path)
    outcome = classify("TEST-99-LAB", 0, 60, ending, report)
    assert outcome.status == Status.ERROR
    assert "LAVA job 7 ended Incomplete: lava test monitoring has timed out" in outcome.reason
    assert f"{URL}/scheduler/job/7" in outcome.reason


def test_an_incomplete_job_says_what_lava_s_results_say(tmp_path):
    lab = ScriptedLab([RUNNING, state("Finished", "Incomplete")], console("booting"))
    _, ending, report = follow(lab, tmp_path)
    reason = classify("TEST-99-LAB", 0, 60, ending, report).reason
    assert reason.startswith("LAVA job 7 ended Incomplete: Infrastructure: the device did not power on")


def test_a_job_canceled_in_the_lab_is_an_error(tmp_path):
    lab = ScriptedLab([RUNNING, state("Finished", "Canceled")], console("booting"))
    _, ending, report = follow(lab, tmp_path)
    outcome = classify("TEST-99-LAB", 0, 60, ending, report)
    assert outcome.status == Status.ERROR
    assert "ended Canceled in the lab" in outcome.reason


def test_a_complete_job_whose_guest_said_nothing_is_a_fail(tmp_path):
    lab = ScriptedLab([RUNNING, COMPLETE], console("booting", "reboot: Power down"))
    _, ending, report = follow(lab, tmp_path)
    outcome = classify("TEST-99-LAB", 0, 60, ending, report)
    assert outcome.status == Status.FAIL
    assert "without reporting" in outcome.reason


def test_emergency_mode_is_a_failed_boot_whatever_the_job_s_health(tmp_path):
    lab = ScriptedLab([RUNNING, state("Finished", "Incomplete")], console(*said("X_HARNESS_EMERGENCY=1")))
    _, ending, report = follow(lab, tmp_path)
    assert classify("TEST-99-LAB", 0, 60, ending, report).reason.startswith("boot failed")


def test_a_panic_cancels_the_job_and_fails(tmp_path):
    lines = console("booting", "[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs")
    lab = ScriptedLab([RUNNING], lines)
    _, ending, report = follow(lab, tmp_path)
    assert ending.kind == EndingKind.PANIC and lab.cancelled == [7]
    assert classify("TEST-99-LAB", 0, 60, ending, report).status == Status.FAIL


def test_the_harness_s_timeout_cancels_the_job_and_fails(tmp_path):
    lab = ScriptedLab([RUNNING], console(*said("READY=1")))
    _, ending, report = follow(lab, tmp_path, timeout=0.05)
    assert ending.kind == EndingKind.TIMEOUT and lab.cancelled == [7]
    outcome = classify("TEST-99-LAB", 0, 0.05, ending, report)
    assert outcome.status == Status.FAIL and "while the test was running" in outcome.reason


def test_a_job_no_device_takes_is_an_error_and_canceled(tmp_path):
    lab = ScriptedLab([state("Submitted")])
    _, ending, _ = follow(lab, tmp_path, queue_limit=0.05)
    assert ending.kind == EndingKind.INFRASTRUCTURE and lab.cancelled == [7]
    assert "waited 0 s for a device" in ending.detail


def test_a_console_flood_cancels_the_job_and_cuts_the_log(tmp_path):
    lab = ScriptedLab([RUNNING], console(*["x" * 1000] * 30), per_poll=10)
    _, ending, _ = follow(lab, tmp_path, console_limit=4096)
    assert ending.kind == EndingKind.CONSOLE_FLOOD and lab.cancelled == [7]
    assert (tmp_path / "console.log").read_bytes().startswith(b"x" * 1000)
    assert b"the log is cut here" in (tmp_path / "console.log").read_bytes()


def test_the_queue_limit_comes_from_the_environment():
    assert Settings.from_environment({}).lava_queue_timeout == 600
    assert Settings.from_environment({"HARNESS_LAVA_QUEUE_TIMEOUT": "30"}).lava_queue_timeout == 30
    with pytest.raises(HarnessError, match="HARNESS_LAVA_QUEUE_TIMEOUT"):
        Settings.from_environment({"HARNESS_LAVA_QUEUE_TIMEOUT": "soon"})


# -- the job definition -----------------------------------------------------------------


def test_the_job_deploys_boots_and_monitors_the_test():
    job = yaml.safe_load(
        lava_job.job_definition("TEST-99-LAB", 600, "file:///tmp/x/board.raw", "qemu", ("hdmi",), "x86_64")
    )
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert deploy["images"]["disk"]["url"] == "file:///tmp/x/board.raw"
    assert boot == {"method": "qemu", "media": "tmpfs", "timeout": {"seconds": lava_job.BOOT_TIMEOUT}}
    assert job["tags"] == ["hdmi"] and job["context"] == {"arch": "amd64"}
    # LAVA gives up after the harness would: the harness decides timeouts itself.
    assert test["timeout"]["seconds"] > 600 and job["timeouts"]["job"]["seconds"] > 600 + 600
    (monitor,) = test["monitors"]
    assert monitor["name"] == "TEST-99-LAB"


def test_the_monitor_reads_what_the_guest_writes():
    """LAVA's monitor takes the console lines through these patterns (re, as pexpect)."""
    job = yaml.safe_load(lava_job.job_definition("TEST-99-LAB", 60, "file:///x", "qemu"))
    monitor = job["actions"][2]["test"]["monitors"][0]
    text = "\r\n".join(PASSING)
    assert re.search(monitor["start"], text) and re.search(monitor["end"], text)
    cases = [m.groupdict() for m in re.finditer(monitor["pattern"], text + "\r\n")]
    assert cases == [
        {"result": "pass", "test_case_id": "testcase_one"},
        {"result": "pass", "test_case_id": "TEST-99-LAB"},
    ]
    # Half a name on the console so far is no case yet: LAVA waits for the rest.
    assert re.search(monitor["pattern"], f"{CONSOLE_CHANNEL.prefix}X_HARNESS_TEST=pass 0 TEST-99") is None


def test_requires_are_device_tags(monkeypatch):
    backend = LavaBackend(URL, "qemu", None)
    monkeypatch.setattr(
        backend.client, "device_tags", lambda device_type: [frozenset({"hdmi"}), frozenset({"can", "usb"})]
    )
    decl = declaration("--requires=can", "--requires=usb")
    assert backend.unmet_requirements(decl) == []
    decl = declaration("--requires=can", "--requires=hdmi")
    assert backend.unmet_requirements(decl) == ["no qemu device has the tags can, hdmi"]


# -- the client, against a stub of LAVA's REST API ---------------------------------------


class StubLava(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, str | None]]] = []

    def log_message(self, *args):
        pass

    def answer(self, code: int, body: object, kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != "Token sesame":
            return self.answer(401, {"detail": "Invalid token."})
        routes = {
            "/api/v0.2/jobs/7/": {"state": "Running", "health": "Unknown", "actual_device": "qemu-01"},
            "/api/v0.2/jobs/7/logs/?start=1": (
                b'- {"dt": "2026", "lvl": "target", "msg": "HARNESS_NOTIFY READY=1"}\n'
                b'- {"dt": "2026", "lvl": "results", "msg": {"case": "x"}}\n'
            ),
            "/api/v0.2/jobs/7/cancel/": {},
            "/api/v0.2/devices/?device_type=qemu&limit=500": {
                "results": [
                    {"hostname": "qemu-01", "health": "Good", "tags": [1, 2]},
                    {"hostname": "qemu-02", "health": "Retired", "tags": [3]},
                ]
            },
            "/api/v0.2/tags/?limit=500": {"results": [{"id": 1, "name": "hdmi"}, {"id": 2, "name": "usb"}]},
            "/api/v0.2/jobs/7/tests/?suite__name=lava&name=job": {
                "results": [
                    {
                        "name": "job",
                        "metadata": "case: job\nerror_msg: 'Unable to get\n  x'\nerror_type: Job\n",
                    }
                ]
            },
        }
        if self.path not in routes:
            return self.answer(404, {"detail": "Not found."})
        body = routes[self.path]
        self.answer(200, body, "application/yaml" if isinstance(body, bytes) else "application/json")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body["definition"]))
        self.answer(201, {"message": "job(s) successfully submitted", "job_ids": [7]})


@pytest.fixture
def lava():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubLava)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StubLava.requests = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_client_speaks_lava_s_rest_api(lava):
    client = LavaClient(lava + "/", "sesame")
    assert client.submit("job_name: x\n") == 7
    assert StubLava.requests[-1] == ("POST", "/api/v0.2/jobs/", "job_name: x\n")
    assert client.job(7) == JobState(7, "Running", "Unknown", "qemu-01", "")
    assert client.log(7, 1) == [
        LogLine("target", "HARNESS_NOTIFY READY=1"),
        LogLine("results", "{'case': 'x'}"),
    ]
    assert client.log(7, 3) == []  # no new lines: LAVA answers 404
    assert client.device_tags("qemu") == [frozenset({"hdmi", "usb"})]
    assert client.job_error(7) == "Job: Unable to get x"
    client.cancel(7)
    assert StubLava.requests[-1][:2] == ("GET", "/api/v0.2/jobs/7/cancel/")
    assert client.job_url(7) == f"{lava}/scheduler/job/7"


def test_a_wrong_token_says_so_and_is_never_shown(lava):
    with pytest.raises(LabError) as e:
        LavaClient(lava, "wrong-secret").job(7)
    assert "answered 401" in str(e.value) and "HARNESS_LAVA_TOKEN" in str(e.value)
    assert "wrong-secret" not in str(e.value)


def test_an_unreachable_server_names_the_url_and_the_fix():
    with pytest.raises(LabError, match=r"unreachable.*\n  fix: .*HARNESS_LAVA_URL"):
        LavaClient("http://127.0.0.1:9", None, timeout=2).job(7)


def test_make_backend_needs_the_url():
    from harness.backends import make_backend

    with pytest.raises(HarnessError, match="-Dlava-url"):
        make_backend(Settings.from_environment({}, Options(backend="lava")))
    env = {"HARNESS_LAVA_DEVICE_TYPE": "rpi4"}
    backend = make_backend(Settings.from_environment(env, Options(backend="lava", lava_url=URL)))
    assert isinstance(backend, LavaBackend)
    assert (backend.name, backend.device_type) == ("lava", "rpi4")


@pytest.mark.parametrize(
    "result, code, status, verdict",
    [
        ("success", "exited", "0", "pass"),
        ("exit-code", "exited", "123", "pass"),
        ("exit-code", "exited", "77", "skip"),
        ("exit-code", "exited", "1", "fail"),
        ("signal", "killed", "TERM", "fail"),
    ],
)
def test_the_guest_s_verdict_line_follows_the_harness_s_rule(result, code, status, verdict):
    """What the test unit's ExecStopPost= writes for LAVA, run by sh as systemd hands it
    over ($$ and %% unescaped), to stdout instead of the console."""
    unit = render_test_unit(declaration(), interactive=False, channel=CONSOLE_CHANNEL)
    (stop,) = [line for line in unit.splitlines() if "X_HARNESS_TEST=" in line]
    script = stop.split("sh -c '", 1)[1].rsplit("'", 1)[0].replace("$$", "$").replace("%%", "%")
    script = script.replace(f"test -c {CONSOLE_CHANNEL.device} && ", "").replace(
        f">{CONSOLE_CHANNEL.device}", ""
    )
    env = {"SERVICE_RESULT": result, "EXIT_CODE": code, "EXIT_STATUS": status, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True).stdout
    assert f"{CONSOLE_CHANNEL.prefix}X_HARNESS_TEST={verdict} 0 TEST-99-UNIT\n" in out


def test_a_job_slow_to_finish_after_the_guest_s_end_is_left_to_finish(tmp_path):
    """The lab's worker may notice the end only at its next ping: the guest's word decides,
    and the job is not canceled (it would show Canceled in the lab)."""
    lab = ScriptedLab([RUNNING], console(*PASSING))
    _, ending, report = follow(lab, tmp_path, finish_grace=0)
    assert ending.kind == EndingKind.EXITED and lab.cancelled == []
    assert classify("TEST-99-LAB", 0, 60, ending, report).status == Status.PASS


def test_the_image_server_needs_its_directory_and_url_together(tmp_path):
    assert image_server("", "") is None
    with pytest.raises(HarnessError, match="both the directory for the images and its URL"):
        image_server(str(tmp_path), "")
    with pytest.raises(HarnessError, match="does not exist"):
        image_server(str(tmp_path / "nowhere"), "http://files.invalid/lava")
    assert image_server(str(tmp_path), "http://x/") == ImageServer(tmp_path, "http://x/")


def test_an_image_offered_by_the_server_is_gone_after_the_job(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    image = tmp_path / "board.raw"
    image.write_bytes(b"image")
    with offered(image, ImageServer(served, "http://files.invalid/lava/")) as url:
        (shelf,) = served.iterdir()
        assert url == f"http://files.invalid/lava/{shelf.name}/board.raw" and len(shelf.name) >= 24
        assert (shelf / "board.raw").read_bytes() == b"image"
    assert list(served.iterdir()) == []
    with offered(image.with_name("other.raw"), None) as url:
        assert url == f"file://{tmp_path}/other.raw"


def test_a_server_that_stops_answering_for_a_moment_is_waited_for(tmp_path, monkeypatch):
    lab = ScriptedLab([RUNNING, RUNNING, COMPLETE], console(*PASSING), per_poll=10)
    answers = iter([LabError("LAVA at http://lava.invalid: GET jobs/7/ answered 502: Bad Gateway")])

    def job(job_id):
        for error in answers:
            raise error
        return ScriptedLab.job(lab, job_id)

    monkeypatch.setattr(lab, "job", job)
    monkeypatch.setattr("harness.backends.lava.backend.time.sleep", lambda s: None)
    _, ending, report = follow(lab, tmp_path)
    assert classify("TEST-99-LAB", 0, 60, ending, report).status == Status.PASS


def test_a_server_gone_for_good_is_an_error(tmp_path, monkeypatch):
    lab = ScriptedLab([RUNNING])
    clock = iter(range(0, 10_000, 20))
    monkeypatch.setattr("harness.backends.lava.backend.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("harness.backends.lava.backend.time.sleep", lambda s: None)

    def job(job_id):
        raise LabError("LAVA at http://lava.invalid unreachable (GET jobs/7/): Connection refused")

    monkeypatch.setattr(lab, "job", job)
    with pytest.raises(LabError, match="unreachable"):
        follow(lab, tmp_path)


def test_lava_job_names_what_is_wrong_with_its_build_directory(tmp_path, capsys):
    from harness.__main__ import main

    assert main(["lava-job", "-C", str(tmp_path), "TEST-01-BASIC"]) == 99
    assert "cannot read the tests of" in capsys.readouterr().err
    (tmp_path / "meson-info").mkdir()
    tests = [{"name": "TEST-02-X", "cmd": ["python3", "-m", "harness", "run", "--tap"]}]
    (tmp_path / "meson-info" / "intro-tests.json").write_text(json.dumps(tests))
    assert main(["lava-job", "-C", str(tmp_path), "TEST-01-BASIC"]) == 99
    assert "has no test TEST-01-BASIC\n  fix: use one of: TEST-02-X" in capsys.readouterr().err


def test_lava_job_reads_every_option_the_glue_gives_a_run():
    """What the glue's test() passes to `run` (each '--NAME=' of its args), lava-job must
    read too: an option it did not know would be taken for a declaration key."""
    from harness.__main__ import meson_run_options

    glue = (
        Path(__file__).parent.parent / "harness" / "project" / "glue" / "test" / "meson.build"
    ).read_text()
    passed = sorted(set(re.findall(r"'(--[a-z-]+)=", glue[glue.index("test(name, python") :])))
    assert "--timeout-bound" in passed and "--glue-version" in passed
    run = meson_run_options(["--tap", "--image=/x.raw", *(f"{option}=1" for option in passed)])
    assert run.declaration_options == []
