"""A repository of one's own: the meson glue `os-harness init` writes (`repository`,
`glue/`), and systemd's own integration tests fetched into one (`systemd_tests`).
"""
