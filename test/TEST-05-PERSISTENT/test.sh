#!/bin/bash
# With storage 'persistent' the test's disk survives a reboot inside the test: the
# journal of the first boot is still there in the second.
set -eux

marker=/var/lib/harness-persistent-test
if [ ! -e "$marker" ]; then
    echo "first boot, rebooting" | systemd-cat -t harness-persistent -p notice
    touch "$marker"
    journalctl --sync
    sync
    # --force: the test unit is not stopped, so it neither succeeds nor fails here.
    systemctl reboot --force
    sleep infinity
fi

# The previous boot exists in the journal, and it holds the first boot's message.
journalctl --boot=-1 --identifier=harness-persistent --quiet --no-pager | grep "first boot, rebooting"
