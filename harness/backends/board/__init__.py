"""What the board backends (autokit, LAVA) share: the image a board is flashed with
(`image`) and its serial console as the host receives it (`console`).
"""
