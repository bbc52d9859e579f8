#!/bin/bash
# A text and a binary credential arrive byte-exact through SMBIOS.
set -eux

printf '%s' 'Hello, world: commas, "quotes" and = signs' | cmp - "$CREDENTIALS_DIRECTORY/harness.greeting"
# blob.bin holds every byte value, NUL and newline included; the image carries a copy.
cmp /usr/lib/harness/tests/TEST-02-CREDENTIALS/blob.bin "$CREDENTIALS_DIRECTORY/harness.blob"
