"""Client for a LAVA server's REST API (v0.2): the five things the backend needs, on the
endpoints LAVA documents: submit a job, read its state, read its log from a line on,
cancel it, and list a device type's devices with their tags.

Every failure to talk to the server is a LabError, an infrastructure error (99): a lab
that cannot take or run a job says nothing about the OS under test. The token goes in
the Authorization header only; it is never part of a message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import attrs
import yaml

from harness.errors import HarnessError

# A job's states and healths as the API spells them (get_state_display/get_health_display).
FINISHED = "Finished"
COMPLETE, INCOMPLETE, CANCELED = "Complete", "Incomplete", "Canceled"
QUEUED = ("Submitted", "Scheduling", "Scheduled")


class LabError(HarnessError):
    pass


@attrs.frozen
class JobState:
    id: int
    state: str  # Submitted, Scheduling, Scheduled, Running, Canceling, Finished
    health: str  # Unknown while it runs; then Complete, Incomplete or Canceled
    device: str  # the device the scheduler gave it, or ""
    failure_comment: str

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def queued(self) -> bool:
        return self.state in QUEUED


@attrs.frozen
class LogLine:
    level: str  # "target" is what the device printed on its console
    message: str


class LavaClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, payload: object = None) -> bytes:
        """One exchange with /api/v0.2/PATH; `payload` goes as JSON. The body of a 2xx answer."""
        body = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.url}/api/v0.2/{path}", data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as e:
            message = e.read().decode(errors="replace").strip()[:500] or e.reason
            raise LabError(
                f"LAVA at {self.url}: {method} /api/v0.2/{path} answered {e.code}: {message}",
                _fix_for_status(e.code),
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise LabError(
                f"LAVA at {self.url} unreachable ({method} /api/v0.2/{path}): {getattr(e, 'reason', e)}",
                "check that the server runs (tools/lava-local status) and the URL "
                "(-Dlava-url / HARNESS_LAVA_URL)",
            ) from None

    def json(self, method: str, path: str, payload: object = None) -> Any:
        data = self.request(method, path, payload)
        try:
            return json.loads(data or b"null")
        except ValueError:
            raise LabError(f"LAVA at {self.url}: {path} did not answer JSON: {data[:200]!r}") from None

    def job_url(self, job_id: int) -> str:
        """The job's page in LAVA's web interface."""
        return f"{self.url}/scheduler/job/{job_id}"

    def submit(self, definition: str) -> int:
        answer = self.json("POST", "jobs/", {"definition": definition})
        ids = answer.get("job_ids") if isinstance(answer, dict) else None
        if not ids:
            raise LabError(f"LAVA at {self.url} took the job but gave no job id: {answer!r}")
        return int(ids[0])

    def job(self, job_id: int) -> JobState:
        data = self.json("GET", f"jobs/{job_id}/")
        return JobState(
            id=job_id,
            state=str(data.get("state", "")),
            health=str(data.get("health", "")),
            device=str(data.get("actual_device") or ""),
            failure_comment=str(data.get("failure_comment") or ""),
        )

    def log(self, job_id: int, start: int) -> list[LogLine]:
        """The job's log lines from line `start` on; none while the job has no log yet."""
        try:
            data = self.request("GET", f"jobs/{job_id}/logs/?start={start}")
        except LabError as e:
            if " answered 404" in e.what:  # not started yet, or nothing new
                return []
            raise
        entries = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or []
        return [
            LogLine(str(e.get("lvl", "")), e["msg"] if isinstance(e.get("msg"), str) else str(e.get("msg")))
            for e in entries
            if isinstance(e, dict)
        ]

    def job_error(self, job_id: int) -> str:
        """Why LAVA ended the job Incomplete, as its own `job` result says (error_type:
        error_msg); empty when it says nothing."""
        results = self.json("GET", f"jobs/{job_id}/tests/?suite__name=lava&name=job").get("results", [])
        for result in results:
            if result.get("name") != "job":
                continue
            metadata = yaml.safe_load(result.get("metadata") or "") or {}
            if isinstance(metadata, dict) and metadata.get("error_msg"):
                text = f"{metadata.get('error_type', 'Error')}: {metadata['error_msg']}"
                return " ".join(text.split())[:400]
        return ""

    def cancel(self, job_id: int) -> None:
        # LAVA 2023.01 cancels on GET (a POST is refused with 405).
        self.request("GET", f"jobs/{job_id}/cancel/")

    def device_tags(self, device_type: str) -> list[frozenset[str]]:
        """The tags of each device of the type that can take jobs (not retired)."""
        query = urllib.parse.urlencode({"device_type": device_type, "limit": 500})
        devices = self.json("GET", f"devices/?{query}").get("results", [])
        # A device lists its tags by id; the names are what a job asks for.
        names = {
            t.get("id"): str(t.get("name")) for t in self.json("GET", "tags/?limit=500").get("results", [])
        }
        return [
            frozenset(names.get(t, str(t)) for t in d.get("tags", []))
            for d in devices
            if d.get("health") not in ("Retired", "Bad")
        ]


def _fix_for_status(code: int) -> str:
    if code in (401, 403):
        return "check the API token in HARNESS_LAVA_TOKEN_FILE or HARNESS_LAVA_TOKEN (a token of a user allowed to submit jobs)"
    if code == 404:
        return "check the URL (-Dlava-url / HARNESS_LAVA_URL): it is the server's, without /api"
    if code == 400:
        return "LAVA refused the job definition: `python3 -m harness lava-job NAME` prints it"
    return "see the server's log"
