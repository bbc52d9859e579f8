#!/bin/bash
# The system boots into the test: PID 1 is systemd, nothing has failed, the root is
# the volatile overlay the declaration asked for, and the OS is the one we built.
set -eux

test "$(cat /proc/1/comm)" = systemd
. /etc/os-release
test "$ID" = debian

failed=$(systemctl list-units --failed --no-legend --plain)
if [ -n "$failed" ]; then
    echo "failed units: $failed"
    exit 1
fi

# storage: 'volatile' (the default) keeps writes in memory.
findmnt --noheadings --output FSTYPE / | grep -qx overlay
