# The harness's stand-in for systemd's test/units/test-control.sh: the same functions with
# the same meaning, so that systemd's own test scripts run unchanged, and each subtest and
# testcase they run is told to the host as it goes (one TAP point each), through the
# reporting of the harness's own subtest library ($HARNESS_TESTCASES_LIB, testcases.sh).
#
#   run_subtests                 runs every file "${0%.sh}".*.sh, in order
#   run_subtests_with_signals S  the same, passing the signals S on to the running file
#   run_testcases                runs every testcase_* function, in order
#
# As upstream's: the first failure ends the run (the script's `set -e` then ends the test);
# TEST_MATCH_SUBTEST / TEST_MATCH_TESTCASE select by regular expression, and
# TEST_SKIP_SUBTESTS / TEST_SKIP_TESTCASES (space-separated regular expressions) leave
# out. The harness's names for the same, HARNESS_MATCH_* and HARNESS_SKIP_*, work too.
# Sourced, never run.

if [[ "${BASH_SOURCE[0]}" -ef "$0" ]]; then
    echo >&2 "This file is sourced by a test script, not run"
    exit 1
fi

# The reporting helpers (_harness_tell_host, _harness_journal); our run_testcases is
# redefined below with upstream's meaning.
if [[ -r "${HARNESS_TESTCASES_LIB:-}" ]]; then
    # shellcheck source=/dev/null
    . "$HARNESS_TESTCASES_LIB"
else
    _harness_tell_host() { :; }
    _harness_journal() { :; }
fi

declare -i _CHILD_PID=0
_PASSED_TESTS=()

# _selected KIND NAME: whether the host's selection runs NAME (KIND: SUBTEST or TESTCASE)
_selected() {
    local match skip pattern
    match="TEST_MATCH_$1" skip="TEST_SKIP_$1S"
    local wanted="${!match:-}" ours_match="HARNESS_MATCH_$1" ours_skip="HARNESS_SKIP_$1"
    wanted=${wanted:-${!ours_match:-}}
    if [[ -n "$wanted" ]] && ! [[ "$2" =~ $wanted ]]; then
        echo "Skipping $2 (not matching '$wanted')"
        return 1
    fi
    for pattern in ${!skip:-} ${!ours_skip:-}; do
        if [[ "$2" =~ $pattern ]]; then
            echo "Skipping $2 (matching '$pattern')"
            return 1
        fi
    done
}

# _report NAME STATUS START_NS: tell the host how NAME ended. Its callers send its stderr,
# and so the trace of `set -x`, to /dev/null: the test's log shows upstream's lines only.
_report() {
    local ms=$((($(date +%s%N) - $3) / 1000000)) result=pass detail=""
    [[ "$2" -eq 0 ]] || result=fail detail="exited with status $2"
    _harness_journal "$1" "$result" "$ms" "$1: $result${detail:+ ($detail)}"
    _harness_tell_host "X_HARNESS_TESTCASE=$result $ms $1 $detail"
}

_handle_signal() {
    local sig="${1:?}"
    if [[ $_CHILD_PID -gt 0 ]]; then
        echo "Propagating signal $sig to child process $_CHILD_PID"
        kill -s "$sig" "$_CHILD_PID"
    fi
}

_wait_harder() {
    local pid="${1:?}"
    while kill -0 "$pid" &>/dev/null; do
        wait "$pid" || :
    done
    wait "$pid"
}

_show_summary() {(
    set +x
    if [[ ${#_PASSED_TESTS[@]} -eq 0 ]]; then
        echo >&2 "No tests were executed, this is most likely an error"
        exit 1
    fi
    printf "PASSED TESTS: %3d:\n" "${#_PASSED_TESTS[@]}"
    echo "------------------"
    printf '%s\n' "${_PASSED_TESTS[@]}"
)}

# _run_subtests WITH_SIGNALS: the loop of both run_subtests functions
_run_subtests() {
    local subtests=("${0%.sh}".*.sh)
    local subtest name start status

    if [[ ! -e "${subtests[0]}" ]]; then
        echo >&2 "No subtests found for file $0"
        exit 1
    fi
    for subtest in "${subtests[@]}"; do
        _selected SUBTEST "$subtest" || continue
        name=${subtest##*/}
        name=${name%.sh}
        : "--- $subtest BEGIN ---"
        _harness_tell_host "X_HARNESS_TESTCASE_START=$name" 2>/dev/null
        start=$(date +%s%N)
        SECONDS=0
        if [[ "$1" == 1 ]]; then
            "./$subtest" &
            _CHILD_PID=$!
            _wait_harder "$_CHILD_PID" && status=0 || status=$?
        else
            "./$subtest" && status=0 || status=$?
        fi
        _report "$name" "$status" "$start" 2>/dev/null
        if [[ $status -ne 0 ]]; then
            echo "Subtest $subtest failed"
            return 1
        fi
        _PASSED_TESTS+=("$subtest")
        : "--- $subtest END (${SECONDS}s) ---"
    done
    _show_summary
}

run_subtests() {
    _run_subtests 0
}

run_subtests_with_signals() {
    local sig
    if [[ "$#" -eq 0 ]]; then
        echo >&2 "No signals to propagate were specified"
        exit 1
    fi
    for sig in "$@"; do
        # shellcheck disable=SC2064
        trap "_handle_signal $sig" "$sig"
    done
    _run_subtests 1
}

run_testcases() {
    local testcase testcases start status errexit=0

    mapfile -t testcases < <(declare -F | awk '$3 ~ /^testcase_/ {print $3;}')
    if [[ "${#testcases[@]}" -eq 0 ]]; then
        echo >&2 "No test cases found, this is most likely an error"
        exit 1
    fi
    for testcase in "${testcases[@]}"; do
        _selected TESTCASE "$testcase" || continue
        : "+++ $testcase BEGIN +++"
        _harness_tell_host "X_HARNESS_TESTCASE_START=$testcase" 2>/dev/null
        start=$(date +%s%N)
        # In a subshell, as upstream's (a RETURN trap of the function must not fire here
        # again), and as a plain command: `set -e` holds inside it only so. Its status is
        # told to the host, and a failure ends the run as upstream's `set -e` would.
        case $- in *e*) errexit=1; set +e ;; esac
        (
            [[ $errexit == 1 ]] && set -e
            "$testcase"
        )
        status=$?
        [[ $errexit == 1 ]] && set -e
        _report "$testcase" "$status" "$start" 2>/dev/null
        [[ $status -eq 0 ]] || return "$status"
        : "+++ $testcase END +++"
    done
}
