"""The integration test harness: one test's run, declare -> plan -> boot -> collect ->
classify -> report, readable in `wrapper.run_test`.

The core sits at the top of the package: `declaration` (what a test declares), `image`
and `accel` (what the host and the image allow), `backend` (the protocol every machine
implements, and the boot plan), `notify`/`subtests`/`journal`/`timeline` (what the guest
said), `results` (the verdict), `record` (result.json), and `guest/` (the units and
scripts the guest runs). Around it: `backends/` (the machines: qemu, autokit, fake) and
`report/` (TAP, the HTML report and JSON summary). The core imports neither; the command
line (`__main__`) joins them. docs/architecture.md draws the picture.
"""
