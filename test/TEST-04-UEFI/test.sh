#!/bin/bash
# The image boots through OVMF, systemd-boot and its UKI; the harness's command line
# arrives through SMBIOS. (With no command line of its own, the test resumes the UEFI
# snapshot: that boot took the same way.)
set -eux

test -d /sys/firmware/efi
test -e /sys/firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
grep -qw systemd.firstboot=no /proc/cmdline

# The boot through the UKI is as clean as a direct kernel boot.
failed=$(systemctl list-units --failed --no-legend --plain)
if [ -n "$failed" ]; then
    echo "failed units: $failed"
    exit 1
fi
