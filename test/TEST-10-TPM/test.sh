#!/bin/bash
# The machine has a TPM 2.0 (declared tpm: true; on a VM swtpm beside QEMU), the kernel
# drives it, and it answers: its SHA-256 PCRs read back, PCR 0 as the firmware left it.
set -eux

test -c /dev/tpmrm0
test "$(cat /sys/class/tpm/tpm0/tpm_version_major)" = 2
pcr0=$(cat /sys/class/tpm/tpm0/pcr-sha256/0)
test "${#pcr0}" = 64

# systemd sees its driver too (has-tpm2 came with systemd 254; the image has no tss2
# libraries, so it says "partial").
if [ "$(systemctl --version | awk 'NR == 1 { print $2 }')" -ge 254 ]; then
    systemd-analyze has-tpm2 | tee /tmp/has-tpm2 || true
    grep -qx '+driver' /tmp/has-tpm2
fi
