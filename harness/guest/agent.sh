#!/bin/sh
# The harness's agent, for the fast path: it runs in the booted VM that the host saves
# as a snapshot, and waits there for a test. The host resumes a copy of that VM per test
# and sends one line over the virtio-serial port io.harness.agent: shell commands, run
# here in this shell (no process of their own), that set the clock, reseed the entropy
# pool, install the test unit and its credentials, and start the unit. All the logic is
# in those commands, written by the host, so this file stays the same whatever the
# harness learns to send.
set -u
notify=/dev/virtio-ports/io.harness.notify
port=/dev/virtio-ports/io.harness.agent

# Save the VM only once the boot has settled: what still runs at that point would run
# again, half-done, in every test. udev's coldplug goes on after the jobs are done (it
# loads modules for seconds under emulation), hence the settle.
systemctl is-system-running --wait >/dev/null 2>&1 || :
udevadm settle --timeout=60 >/dev/null 2>&1 || :
mkdir -p /run/credstore  # for the test's credentials: made here, it is one process fewer per test
sync
# The boot's timeline, once: every resumed test shares this boot.
printf 'X_HARNESS_TIMELINE=%s\n' "$(sh "$CREDENTIALS_DIRECTORY/harness.timeline")" >"$notify"
printf 'X_HARNESS_AGENT_READY=1\n' >"$notify"

# Until a host connects to the port, reading it ends at once with nothing: poll. (The
# host stays connected while it boots the snapshot, so the read blocks instead.)
while :; do
    line=$(head -n 1 "$port" 2>/dev/null) || line=
    [ -n "$line" ] && break
    sleep 0.05
done
umask 077
set -e
eval "$line"
