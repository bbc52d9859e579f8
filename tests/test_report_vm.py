"""End to end, what issue 4 asks: `meson test` on a suite with a deliberately failing
subtest, then meson's JUnit file, the JSON summary and the HTML report (in headless
Chromium) all name it and agree on the counts.

The suite is a small meson project made in a temporary directory from this one's
meson files and two tests of its own: a UEFI test whose payload (sent as a credential,
so the shared image needs no rebuild) has a passing, a failing and a skipping subtest,
and a disabled test.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e import IMAGE, add_test_with_a_failing_subtest, meson_project, meson_setup, meson_test_suite

pytestmark = pytest.mark.vm

CHROMIUM = "/usr/bin/chromium"
FAILING = "TEST-90-FAILING-SUBTEST"


def make_project(where: Path) -> Path:
    meson_project(where)
    add_test_with_a_failing_subtest(where, FAILING, firmware="uefi")
    disabled = where / "test" / "TEST-91-DISABLED"
    disabled.mkdir()
    (disabled / "meson.build").write_text("""\
integration_tests += [integration_test_template + {'name' : fs.name(meson.current_source_dir()), 'enabled' : false}]
""")
    return where


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    if not IMAGE.is_file():
        pytest.fail(f"no image at {IMAGE}: build it with 'meson compile -C build mkosi'")
    project = make_project(tmp_path_factory.mktemp("project"))
    build, env = meson_setup(project)
    return meson_test_suite(project, build, env), build


def junit_counts(build: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    root = ET.parse(build / "meson-logs" / "testlog.junit.xml").getroot()
    cases = []
    for case in root.iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        cases.append((case.get("name", ""), kinds[0] if kinds else "pass"))
    count = {k: sum(1 for _, s in cases if s == k) for k in ("pass", "failure", "error", "skipped")}
    return count, cases


def test_meson_junit_has_one_case_per_subtest(suite_run):
    result, build = suite_run
    assert result.returncode == 1
    count, cases = junit_counts(build)
    names = {name.split(" - ", 1)[-1]: status for name, status in cases}
    assert names[f"{FAILING}/testcase_1_passes"] == "pass"
    assert names[f"{FAILING}/testcase_2_fails_on_purpose"] == "failure"
    assert names[f"{FAILING}/testcase_3_skips"] == "skipped"
    assert count == {"pass": 1, "failure": 1, "error": 0, "skipped": 2}


def test_wrapper_names_the_subtest_and_prints_rerun_and_journal_commands(suite_run):
    _, build = suite_run
    log = (build / "meson-logs" / "testlog.txt").read_text()
    assert "FAIL testcase_2_fails_on_purpose: exited with status 1" in log
    assert f"meson test -C {build} --interactive {FAILING}" in log
    assert (
        f"journalctl --file {build}/integration-tests/{FAILING}/journal.journal -u {FAILING}.service" in log
    )


def test_json_summary_agrees_with_meson(suite_run):
    _, build = suite_run
    data = json.loads((build / "meson-logs" / "integration-tests-summary.json").read_text())
    count, _ = junit_counts(build)
    assert data["suite"] == "integration-tests on qemu"
    assert data["stats"] == {
        "tests": sum(count.values()),
        "ran": sum(count.values()) - count["skipped"],
        "skipped": count["skipped"],
        "passed": count["pass"],
        "failed": count["failure"],
        "errors": count["error"],
    }
    assert data["tests"][f"{FAILING}/testcase_2_fails_on_purpose"] == "failed"
    assert data["tests"]["TEST-91-DISABLED"] == "skipped"
    assert data["dateTime"]


def test_html_report_renders_in_chromium(suite_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: tools/setup installs Debian's chromium")
    _, build = suite_run
    report = build / "meson-logs" / "integration-tests-report.html"
    data = json.loads((build / "meson-logs" / "integration-tests-summary.json").read_text())
    with sync_api.sync_playwright() as p:
        # No network for the browser: the report must stand on its own.
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            assert page.inner_text("#cases-total") == str(data["stats"]["tests"])
            assert page.inner_text("#cases-failed") == str(data["stats"]["failed"]) == "1"
            assert page.inner_text("#tests-fail") == "1" and page.inner_text("#tests-skip") == "1"
            section = page.locator(f"section#{FAILING}")
            failing_row = section.locator("tr.subtest-fail")
            assert failing_row.is_visible() and "testcase_2_fails_on_purpose" in failing_row.inner_text()
            for what in ("pre.console", "pre.journal", "svg.timeline", "img.screenshot"):
                element = section.locator(what)
                element.scroll_into_view_if_needed()
                assert element.is_visible(), f"{what} is not visible"
                box = element.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 20, f"{what} is drawn too small: {box}"
            assert section.locator("img.screenshot").evaluate("img => img.complete && img.naturalWidth") > 0
            assert "this subtest fails on purpose" in section.locator("pre.console").inner_text()
            assert "testcase_2_fails_on_purpose: fail" in section.locator("pre.journal").inner_text()
            assert section.locator("svg.timeline rect.test-unit").count() == 1
            page.screenshot(path=str(build / "meson-logs" / "integration-tests-report.png"), full_page=True)
            assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
        finally:
            browser.close()
