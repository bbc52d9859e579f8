"""`Deadline`: the one way the harness waits with a time limit (labgrid's Timeout is the
model): a point on the monotonic clock, asked whether it has passed and how long is left.
Every wait with a limit builds one, so "how long may this take" is spelled one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs


@attrs.frozen
class Deadline:
    """A point on the monotonic clock that a wait must not pass; `at` None: never."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def remaining(self, at_most: float | None = None) -> float:
        """Seconds left (never below 0), capped at `at_most`; a deadline of never has
        `at_most` left, or infinity."""
        left = float("inf") if self.at is None else max(0.0, self.at - time.monotonic())
        return left if at_most is None else min(left, at_most)

    def wait_for(self, condition: Callable[[], bool], interval: float) -> bool:
        """Ask `condition` every `interval` s until it holds (True) or this passes (False)."""
        while not condition():
            if self.passed():
                return False
            time.sleep(interval)
        return True
