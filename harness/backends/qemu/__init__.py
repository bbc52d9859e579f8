"""The QEMU backend: each test in a throw-away VM of the shared image (`backend`), either
booted cold or resumed from a booted snapshot (`snapshot`); with the firmware lookup
(`firmware`), the credentials QEMU hands the guest (`credentials`) and the vsock
notify listener (`vsock`)."""
