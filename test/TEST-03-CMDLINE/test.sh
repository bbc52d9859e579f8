#!/bin/bash
# What a test adds to the kernel command line reaches the kernel and systemd.
set -eux

grep -qw -- "$EXPECTED_MARKER" /proc/cmdline
test "$(hostname)" = cmdline-test
