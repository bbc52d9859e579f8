"""Stage 1, declare: what a test's meson.build says (`keys`, `declaration`), on its way
to the wrapper (`file`), and the pieces it names: credentials, extra disks, extra trees.
"""
