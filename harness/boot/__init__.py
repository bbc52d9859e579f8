"""Stage 3, boot: the plan of one boot (`plan`), the protocol every backend's machine
implements (`machine`), whether the host can accelerate it (`accel`), and the one policy
for watching it run (`watch`).
"""
