"""The nspawn backend: a test's in-guest payload in a systemd-nspawn container booted from
the shared image's root partition, for tests that need no kernel of their own."""
