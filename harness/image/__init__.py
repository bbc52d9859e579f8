"""Stage 2, the image: the image under test by its parts (`parts`), read without booting
it: the disk's table (`disk`), the initrd and kernel, the root filesystem, the ESP; and
`check-image` (`doctor`), which says what an image lacks.
"""
