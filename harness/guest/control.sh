#!/bin/sh
# The harness's control agent, for host-driven tests: it starts at every boot of the
# test's machine and runs the host's commands, one at a time, over the device it is given:
# a VM's virtio-serial port (io.harness.control) or a board's serial console, without
# network or ssh. Every boot is marked on the console and announced to the host with its
# boot ID:
#   guest -> host  H BOOT_ID                         a boot is ready for commands
#   host -> guest  C ID SECONDS BASE64-SCRIPT        run the script with sh, for at most SECONDS
#   guest -> host  R ID STATUS BASE64-OUT BASE64-ERR its exit status, stdout and stderr
# Base64 keeps binary output and any size whole on a line-based channel. On a console the
# kernel and systemd print too: the host reads only these lines, and each is written in one
# write(), which a tty keeps whole among other writers.
set -u
port=${1:-/dev/virtio-ports/io.harness.control}
work=/run/harness-control
umask 077
mkdir -p "$work"
boot_id=$(cat /proc/sys/kernel/random/boot_id)
# The port stays open as long as the agent runs: what the host sends while the guest has
# it closed is lost.
exec 3<>"$port"
mark="harness: boot $boot_id is up and answers the host's commands"
echo "$mark" >/dev/kmsg
if [ -t 3 ]; then
    # A console's line discipline would echo the host's commands and cut lines at 4096
    # bytes. And the kernel writes its messages to the console past the tty, in the middle
    # of a reply line: from here on only emergencies (a panic) go there; the journal keeps
    # the rest. The boot's mark goes to the console directly.
    stty -icanon -echo -isig min 1 time 0 <&3
    echo 1 2>/dev/null >/proc/sys/kernel/printk  # read-only in a container
    printf '%s\n' "$mark" >&3
    # A container's agent is on a pty of its own: its console is marked apart.
    if [ "$port" != /dev/console ] && [ -w /dev/console ]; then printf '%s\n' "$mark" >/dev/console; fi
fi
printf 'H %s\n' "$boot_id" >&3

while :; do
    # Until the host is connected, reading the port ends at once with nothing: poll.
    # head reads whole blocks, which is safe here: the host sends one command at a time.
    line=$(head -n 1 <&3 2>/dev/null) || line=
    [ -n "$line" ] || { sleep 0.1; continue; }
    set -- $line
    [ "$#" -eq 4 ] && [ "$1" = C ] || continue
    printf '%s' "$4" | base64 -d >"$work/script"
    timeout -k 2 "$3" sh "$work/script" </dev/null >"$work/out" 2>"$work/err"
    status=$?
    { printf 'R %s %s ' "$2" "$status"; base64 -w0 <"$work/out"; printf ' '; base64 -w0 <"$work/err"; printf '\n'; } >"$work/reply"
    dd if="$work/reply" bs=4M status=none >&3
done
