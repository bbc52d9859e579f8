"""The autokit backend: the same tests on a real board behind an autokit worker
(`backend`), through the worker's HTTP API (`client`), flashed with a per-test copy of
the image (`harness.backends.board.image`, shared with the LAVA backend). `virtual_worker` serves that API in front of a QEMU board, for
people without a rig and for our own tests."""
