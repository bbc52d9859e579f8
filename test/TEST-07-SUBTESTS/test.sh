#!/bin/bash
# Subtests: each testcase_* function is one case in meson's TAP output and JUnit file.
set -eu
. "$HARNESS_TESTCASES_LIB"

testcase_1_root_is_writable() {
    touch /var/tmp/harness-subtest
    test -f /var/tmp/harness-subtest
}

testcase_2_results_are_in_the_journal() {
    # The case before this one left its result in the journal, with structured fields.
    journalctl --sync
    journalctl -b -o cat HARNESS_TESTCASE=testcase_1_root_is_writable HARNESS_TESTCASE_RESULT=pass | grep -q pass
}

testcase_3_skips_itself() {
    harness_skip "shows how a subtest skips"
}

run_testcases
