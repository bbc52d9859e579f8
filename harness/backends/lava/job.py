"""The LAVA job definition of one test: deploy its board image, boot it, and watch the
console with LAVA's monitor test action.

The image is the per-test board image (harness.backends.board.image): the test unit, its
credentials and its kernel command line are inside it, so the job itself carries no
secret and needs no login or shell on the device. The monitor starts at the test unit's
first report line and ends at the guest's last; every subtest line and the guest's
verdict line (Notify.TEST) become a LAVA test case, so LAVA's results list the test
and its subtests as the harness's report does.

LAVA's timeouts are the test's plus a margin: the harness decides a timeout itself (it
cancels the job and says FAIL); LAVA's own only stop a job the harness no longer watches.
"""

from __future__ import annotations

import math

import yaml

from harness.guest.reporting import CONSOLE_CHANNEL
from harness.verdict.notify import Notify

DEPLOY_TIMEOUT = 600  # s: the dispatcher fetches and copies the image (~900 MB here)
BOOT_TIMEOUT = 120  # s: to start the device; the boot itself is the test's time
MARGIN = 120  # s: LAVA gives up this long after the harness would have

# The units' lines on the console, as the harness reads them (guest/units.py), as LAVA's
# regular expressions (the prefix and the keys hold no special character). LAVA matches
# while the console still arrives: a case's name counts once the character after it has
# arrived too, or a name cut by the serial line's pace would be taken for the whole.
START = f"{CONSOLE_CHANNEL.prefix}READY=1"
END = f"{CONSOLE_CHANNEL.prefix}{Notify.DONE}=1"
CASE = (
    f"{CONSOLE_CHANNEL.prefix}(?:{Notify.TESTCASE}|{Notify.TEST})="
    + r"(?P<result>pass|fail|skip) \d+ (?P<test_case_id>[^ \r\n]+)(?=[ \r\n])"
)

LAVA_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "riscv64": "riscv64",
    "i386": "i386",
}  # image.ELF_MACHINES


def _seconds(s: float) -> dict[str, int]:
    return {"seconds": math.ceil(s)}


def job_definition(
    name: str,
    test_timeout: float,
    image_url: str,
    device_type: str,
    tags: tuple[str, ...] = (),
    architecture: str | None = None,
) -> str:
    """The job as YAML, ready to submit or to print for someone who submits by hand."""
    watch = test_timeout + MARGIN
    job: dict[str, object] = {
        "job_name": f"{name} (os-harness)",
        "device_type": device_type,
        "priority": "medium",
        "visibility": "public",
        "timeouts": {
            "job": _seconds(DEPLOY_TIMEOUT + BOOT_TIMEOUT + watch + MARGIN),
            "action": _seconds(watch),
            "connection": _seconds(watch),  # the console may stay silent while the test runs
        },
        "actions": [
            {
                "deploy": {
                    "to": "tmpfs",
                    "timeout": _seconds(DEPLOY_TIMEOUT),
                    "images": {
                        "disk": {
                            "image_arg": "-drive format=raw,file={disk},if=virtio",
                            "url": image_url,
                        }
                    },
                }
            },
            {"boot": {"method": "qemu", "media": "tmpfs", "timeout": _seconds(BOOT_TIMEOUT)}},
            {
                "test": {
                    "timeout": _seconds(watch),
                    "monitors": [{"name": name, "start": START, "end": END, "pattern": CASE}],
                }
            },
        ],
    }
    if tags:
        job["tags"] = list(tags)
    if architecture in LAVA_ARCH:
        job["context"] = {"arch": LAVA_ARCH[architecture]}
    text: str = yaml.safe_dump(job, sort_keys=False, width=200)
    return text
