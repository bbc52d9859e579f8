"""The LAVA backend: the same tests as jobs in a LAVA lab (`backend`), each job written
from the test's plan (`job`) and submitted and followed through LAVA's REST API
(`client`). Its image is the boards' per-test image (`harness.backends.board.image`)."""
