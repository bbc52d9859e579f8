# Subtests for a harness test payload (bash). The harness hands this file to every test
# unit as the credential `harness.testcases`, and points $HARNESS_TESTCASES_LIB at it:
#
#     . "$HARNESS_TESTCASES_LIB"
#     testcase_mounts() { findmnt /var; }
#     testcase_network() { harness_skip "no network in this image"; }
#     run_testcases
#
# run_testcases runs every testcase_* function (alphabetical order, as systemd's own
# integration tests do), each in a subshell with `set -eu`, and goes on after a failure.
# Each result is written to the journal with structured fields (HARNESS_TESTCASE=,
# HARNESS_TESTCASE_RESULT=, HARNESS_TESTCASE_DURATION_MS=) and told to the host, which
# turns it into one TAP point. A testcase exiting 77 (harness_skip) is skipped.
# HARNESS_TESTCASE_FILTER=NAME,NAME runs only those; from the host, HARNESS_MATCH_TESTCASE
# and HARNESS_SKIP_TESTCASE (systemd's TEST_MATCH_TESTCASE, TEST_SKIP_TESTCASE) are regular
# expressions: only the testcases the first matches run, none the second matches.

_harness_tell_host() {
    [ -n "${HARNESS_NOTIFY_DEVICE:-}" ] && [ -w "$HARNESS_NOTIFY_DEVICE" ] || return 0
    printf '%s%s\n' "${HARNESS_NOTIFY_PREFIX:-}" "$1" >>"$HARNESS_NOTIFY_DEVICE" 2>/dev/null || :
}

_harness_journal() {  # NAME RESULT DURATION_MS MESSAGE
    local priority=6
    [ "$2" = fail ] && priority=3
    logger --journald <<EOF 2>/dev/null || :
MESSAGE=$4
PRIORITY=$priority
SYSLOG_IDENTIFIER=harness-testcase
HARNESS_TESTCASE=$1
HARNESS_TESTCASE_RESULT=$2
HARNESS_TESTCASE_DURATION_MS=$3
EOF
}

harness_skip() {  # REASON: skip the running testcase
    printf '%s\n' "$*" >"${_HARNESS_SKIP_FILE:-/dev/null}"
    exit 77
}

_harness_selected() {
    [ -n "${HARNESS_MATCH_TESTCASE:-}" ] && ! [[ $1 =~ $HARNESS_MATCH_TESTCASE ]] && return 1
    [ -n "${HARNESS_SKIP_TESTCASE:-}" ] && [[ $1 =~ $HARNESS_SKIP_TESTCASE ]] && return 1
    [ -z "${HARNESS_TESTCASE_FILTER:-}" ] && return 0
    case ",$HARNESS_TESTCASE_FILTER," in *",$1,"*) return 0 ;; esac
    return 1
}

run_testcases() {
    local names name status start ms result detail failed=0 ran=0 errexit=0
    names=$(compgen -A function testcase_ | sort)
    if [ -z "$names" ]; then
        echo "run_testcases: no testcase_* functions are defined" >&2
        return 1
    fi
    # `set -e` is ignored inside `if`, `||` and `&&`: run each testcase as a plain command.
    case $- in *e*) errexit=1; set +e ;; esac
    _HARNESS_SKIP_FILE=$(mktemp)
    for name in $names; do
        _harness_selected "$name" || continue
        ran=$((ran + 1))
        echo "=== $name ==="
        _harness_tell_host "X_HARNESS_TESTCASE_START=$name"
        : >"$_HARNESS_SKIP_FILE"
        start=$(date +%s%N)
        (set -eu; "$name")
        status=$?
        ms=$((($(date +%s%N) - start) / 1000000))
        case $status in
            0) result=pass detail="" ;;
            77) result=skip detail=$(head -n1 "$_HARNESS_SKIP_FILE") ;;
            *) result=fail detail="exited with status $status"; failed=$((failed + 1)) ;;
        esac
        echo "=== $name: $result${detail:+ ($detail)} in ${ms} ms ==="
        _harness_journal "$name" "$result" "$ms" "$name: $result${detail:+ ($detail)}"
        _harness_tell_host "X_HARNESS_TESTCASE=$result $ms $name $detail"
    done
    rm -f "$_HARNESS_SKIP_FILE"
    [ "$errexit" = 1 ] && set -e
    if [ "$ran" = 0 ]; then
        echo "run_testcases: the selection (HARNESS_TESTCASE_FILTER, HARNESS_MATCH_TESTCASE," \
            "HARNESS_SKIP_TESTCASE) leaves no testcase to run" >&2
        return 1
    fi
    [ "$failed" = 0 ]
}
