#!/bin/bash
# The image boots with Secure Boot enforced: the firmware checked systemd-boot's
# signature, systemd-boot the UKI's, and the kernel knows it.
set -eux

bootctl status --no-pager | tee /tmp/bootctl-status
grep -E '^ *Secure Boot: enabled' /tmp/bootctl-status
# The firmware's variable, as the kernel reads it: 4 bytes of attributes, then 1 for on.
test "$(od -An -tu1 -j4 -N1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | tr -d ' ')" = 1
journalctl -k -b --no-pager | grep -i 'secure boot enabled'
