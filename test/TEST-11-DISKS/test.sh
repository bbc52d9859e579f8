#!/bin/bash
# The machine has the two empty disks the test declares (disks: ['256M', '1G']), found by
# their serials, of the declared sizes; a file system made on one holds what is written.
set -eux

disk1=/dev/disk/by-id/virtio-harness-disk-1
disk2=/dev/disk/by-id/virtio-harness-disk-2
# The test may start before udev has named every disk.
udevadm wait --timeout=60 "$disk1" "$disk2"
test "$(blockdev --getsize64 "$disk1")" = $((256 << 20))
test "$(blockdev --getsize64 "$disk2")" = $((1 << 30))
# Empty: no file system or partition table on them yet.
test -z "$(blkid -p -o value -s TYPE "$disk1" || true)"

mkfs.ext4 -q -L scratch "$disk1"
mkdir -p /mnt/scratch
mount "$disk1" /mnt/scratch
echo written >/mnt/scratch/file
umount /mnt/scratch
mount "$disk1" /mnt/scratch
test "$(cat /mnt/scratch/file)" = written
umount /mnt/scratch
