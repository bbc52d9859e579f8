"""The run's JSON summary and HTML report, beside meson's logs.

meson has no hook for "the suite ended", so every test, once its own result.json is
written, redraws both files from the records of its `meson test` invocation (under a
lock): the test that finishes last leaves the complete report. A run is told apart
from earlier ones by meson's process (its PID and start time), the parent of every
test it runs.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import html
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report.compare import compare, comparison_lines, load_results, results_of
from harness.report.timeline_chart import timeline_svg
from harness.verdict.record import RESULT_FILE, SUMMARY_STATUS, TIMELINE_FILE, TestRecord
from harness.verdict.timeline import parse_systemctl_show

log = logging.getLogger(__name__)

SUMMARY_FILE = "integration-tests-summary.json"
REPORT_FILE = "integration-tests-report.html"
CONSOLE_TAIL = 256 * 1024  # bytes of each console log the report embeds


def current_run() -> str:
    """The identity of the process that started this test (meson test): PID + start time."""
    ppid = os.getppid()
    try:
        stat = Path(f"/proc/{ppid}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "0"
    return f"{ppid}-{start}"


def records_of_run(tests_dir: Path, run: str) -> list[TestRecord]:
    records = []
    for path in sorted(tests_dir.glob(f"*/{RESULT_FILE}")):
        try:
            record = TestRecord.from_json(path.read_text())
        except (OSError, ValueError, TypeError, KeyError) as e:
            # A record cut short or from another version of the harness: the report
            # goes on without it, and says so where the run's output shows it.
            log.warning(f"warning: {path} left out of the report: {e!r}")
            continue
        if record.run == run:
            records.append(record)
    return records


def summary(records: list[TestRecord], suite: str, finished: str) -> dict[str, Any]:
    """The per-suite summary hardware-in-the-loop rigs publish, one entry per case (as in
    meson's JUnit file). Infrastructure errors are kept apart: status "error", counted
    in stats.errors, not in stats.failed."""
    cases = [c for r in records for c in r.cases()]
    count = {s: sum(1 for c in cases if c.status == s) for s in SUMMARY_STATUS}
    return {
        "suite": suite,
        # The images the records ran on: one, unless build directories were mixed.
        "os": ", ".join(sorted({r.os for r in records if r.os})),
        "stats": {
            "tests": len(cases),
            "ran": len(cases) - count["skip"],
            "skipped": count["skip"],
            "passed": count["pass"],
            "failed": count["fail"],
            "errors": count["error"],
        },
        "tests": {c.name: SUMMARY_STATUS[c.status] for c in cases},
        "dateTime": finished,
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def update_run_report(
    build_dir: Path, tests_dir: Path, run: str, suite: str, compare_with: Path | None = None
) -> tuple[Path, Path]:
    """Redraw the summary and the report of `run` from the records written so far; the
    report compares them with the run `compare_with` left, if given (HARNESS_COMPARE_WITH)."""
    logs = build_dir / "meson-logs"
    logs.mkdir(parents=True, exist_ok=True)
    with _locked(logs / ".integration-tests.lock"):
        records = records_of_run(tests_dir, run)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        data = summary(records, suite, now)
        paths = (logs / SUMMARY_FILE, logs / REPORT_FILE)
        page = render_html(records, data, compared(records, compare_with) if compare_with else [])
        for path, text in zip(paths, (json.dumps(data, indent=1) + "\n", page), strict=True):
            partial = path.with_suffix(".partial")
            partial.write_text(text)
            partial.replace(path)
    return paths


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


def _console_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - CONSOLE_TAIL))
            data = f.read()
    except OSError:
        return ""
    text = ANSI.sub("", data.decode(errors="replace"))
    return ("[... earlier output cut ...]\n" if size > CONSOLE_TAIL else "") + text


def _embedded_png(path: Path) -> str:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    except OSError:
        return ""


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
.badge { font-weight: bold; padding: 0 0.4em; border-radius: 3px; color: white; }
.pass { background: #2a7d2a; } .fail { background: #c0392b; } .skip { background: #888; } .error { background: #8e44ad; }
section { border-top: 2px solid #ddd; margin-top: 1.5em; }
pre { background: #f6f6f6; padding: 0.6em; max-height: 30em; overflow: auto; font-size: 12px; }
.timeline text { font-size: 11px; font-family: monospace; }
.timeline .tick { stroke: #ddd; }
.timeline .phase-kernel { fill: #e3b448; } .timeline .phase-initrd { fill: #cf8a2e; } .timeline .phase-system { fill: #9bbfe0; }
.timeline .unit { fill: #5b8fd0; } .timeline .inactive { fill: #bbb; } .timeline .test-unit { fill: #c0392b; }
img.screenshot { border: 1px solid #999; max-width: 640px; }
code { background: #f0f0f0; padding: 0 0.2em; }
"""


def _badge(status: str) -> str:
    return f'<span class="badge {status}">{status.upper()}</span>'


def _test_section(r: TestRecord) -> str:
    e = html.escape
    log_dir = Path(r.log_dir)
    is_open = " open" if r.status != "pass" else ""
    parts = [
        f'<section id="{e(r.name)}" class="test test-{r.status}">',
        f"<h2>{_badge(r.status)} {e(r.name)}</h2>",
        f'<p class="reason">{e(r.reason)}</p>',
        f"<p>{r.duration_s:.0f} s &middot; firmware {e(r.firmware or '-')} &middot; backend {e(r.backend)}"
        f" &middot; boot {e(r.boot or '-')}"
        + (f" &middot; booted again after {r.retried} crash(es) of the machine" if r.retried else "")
        + f" &middot; started {e(r.started)}"
        + (f' &middot; <a class="job" href="{e(r.job_url)}">job in the lab</a>' if r.job_url else "")
        + "</p>",
    ]
    if r.rerun:
        parts.append(
            '<ul class="rerun">' + "".join(f"<li><code>{e(c)}</code></li>" for c in r.rerun) + "</ul>"
        )
    if r.subtests:
        rows = "".join(
            f'<tr class="subtest subtest-{s.status}"><td>{_badge(s.status)}</td><td>{e(s.name)}</td>'
            f"<td>{'' if s.duration_ms is None else f'{s.duration_ms} ms'}</td><td>{e(s.detail)}</td></tr>"
            for s in r.subtests
        )
        parts.append(
            f'<table class="subtests"><tr><th></th><th>subtest</th><th>took</th><th></th></tr>{rows}</table>'
        )
    screenshot = _embedded_png(log_dir / "screen.png")
    if screenshot:
        parts.append(
            f'<h3>Screen at the end</h3><img class="screenshot" alt="screen of {e(r.name)} at the end" '
            f'src="{screenshot}">'
        )
    timeline = parse_systemctl_show(_read(log_dir / TIMELINE_FILE))
    if timeline is not None:
        parts.append(f"<h3>Boot timeline</h3>{timeline_svg(timeline, highlight=f'{r.name}.service')}")
    if r.journal_excerpt:
        parts.append(
            f"<details{is_open}><summary>Journal of {e(r.name)}.service</summary>"
            f'<pre class="journal">{e(r.journal_excerpt)}</pre></details>'
        )
    console = _console_text(log_dir / "console.log")
    if console:
        parts.append(
            f'<details{is_open}><summary>Console log</summary><pre class="console">{e(console)}</pre></details>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def compared(records: list[TestRecord], earlier: Path) -> list[str]:
    """The comparison's lines for the report: the run so far against the `earlier` one."""
    try:
        return comparison_lines(compare(load_results(earlier), results_of(records, "this run")))
    except HarnessError as e:  # the report stands without it
        return [f"not compared with {earlier}: {e.what}"]


def render_html(records: list[TestRecord], data: dict[str, Any], comparison: list[str] | None = None) -> str:
    """One self-contained page: no scripts, no network, images inline; `comparison`: the
    lines comparing the run with an earlier one."""
    e = html.escape
    stats = data["stats"]
    by_status = {s: sum(1 for r in records if r.status == s) for s in ("pass", "fail", "skip", "error")}
    rows = "".join(
        f'<tr class="row-{r.status}"><td>{_badge(r.status)}</td><td><a href="#{e(r.name)}">{e(r.name)}</a></td>'
        f"<td>{r.duration_s:.0f} s</td><td>{e(r.firmware or '-')}</td><td>{e(r.boot or '-')}</td>"
        f"<td>{e(r.backend)}</td>"
        f"<td>{len(r.cases())}</td><td>{e(r.reason if r.status != 'pass' else '')}</td></tr>"
        for r in records
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(data["suite"])}</title><style>{STYLE}</style></head>
<body>
<h1>{e(data["suite"])}</h1>
<p class="os">{e(data["os"] or "")}</p>
<p class="counts">Tests: <span id="tests-ok">{by_status["pass"]}</span> ok, <span id="tests-fail">{by_status["fail"]}</span> failed,
<span id="tests-skip">{by_status["skip"]}</span> skipped, <span id="tests-error">{by_status["error"]}</span> errors.
Cases (as in the JUnit file): <span id="cases-total">{stats["tests"]}</span>, <span id="cases-passed">{stats["passed"]}</span> passed,
<span id="cases-failed">{stats["failed"]}</span> failed, <span id="cases-skipped">{stats["skipped"]}</span> skipped,
<span id="cases-errors">{stats["errors"]}</span> errors. Updated {e(data["dateTime"])}.</p>
{f'<pre class="comparison">{e(chr(10).join(comparison))}</pre>' if comparison else ""}
<table class="tests"><tr><th></th><th>test</th><th>took</th><th>firmware</th><th>boot</th><th>backend</th><th>cases</th><th>reason</th></tr>{rows}</table>
{"".join(_test_section(r) for r in records)}
</body></html>
"""
