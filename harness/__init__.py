"""The integration test harness: one test's run, in stages, one folder each, in
order: `declaration/` (what a test declares), `image/` (the image under test, read without
booting it), `boot/` (the plan, the machine protocols, the watch), `verdict/` (what the
guest said, the verdict, result.json), `host/` (host-driven tests), `report/` (TAP, HTML,
JSON); `backends/` holds the machines (qemu, autokit, lava, fake), `guest/` what runs
inside the guest, `project/` a repository of one's own. `wrapper.run_test` reads as the
whole flow; `__main__` (the command line) is the only module that joins the core, the
backends and the reports. docs/architecture.md holds the module map.
"""
