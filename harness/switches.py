"""What a HARNESS_* switch is (`Switch`) and what it accepts (`Accepts`: a flag, a number,
one of some words, a path, text), for the table of them in harness/settings.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Accepts:
    """What a switch takes: `what` completes "'x' is not ...", `hint` says what to set
    (the reference table's column), `parse` raises ValueError for anything else. `empty` is the value
    of a switch unset that has no default."""

    what: str
    hint: str
    parse: Callable[[str], Any]
    empty: Any = None


def number(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise ValueError(text)
        return int(text)

    return parse


def positive(text: str) -> float:
    """A number above 0, whole or not (`2`, `2.5`)."""
    value = float(text)  # ValueError for what is not a number
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return value


def one_of(values: Mapping[str, Any], also: Mapping[str, Any] | None = None) -> Accepts:
    """One of the keys of `values` (or, quietly, of `also`: spellings taken before), for its value."""
    accepted = {**values, **(also or {})}

    def parse(text: str) -> Any:
        if text not in accepted:
            raise ValueError(text)
        return accepted[text]

    return Accepts(either(list(values)), either([f"`{v}`" for v in values]), parse)


def either(values: Sequence[str]) -> str:
    return f"{', '.join(values[:-1])} or {values[-1]}"


def text_of(what: str) -> Accepts:
    return Accepts(what, what, str, "")


FLAG = one_of({"0": False, "1": True})
REGEX = text_of("a regular expression (bash's `=~`)")
URL = text_of("a URL")
FILE = Accepts("a file", "a file", Path)
DIRECTORY = Accepts("a directory", "a directory", Path)
TOKEN = text_of("the token")
PROGRAM = text_of("a program, by path or by name on `PATH`")


@attrs.frozen
class Switch:
    """One HARNESS_* variable: it sets the Settings field of its name (HARNESS_COLD_BOOT:
    `cold_boot`). `default` is spelled as the variable would be ("" for none);
    `shown_default` is the reference table's column where that says too little. `aliases` are
    systemd's names for the same, read where ours is unset; with `option`, the variable
    says otherwise than the command-line option of the same name (an `Options` field)."""

    name: str
    accepts: Accepts
    meaning: str
    default: str = ""
    shown_default: str = ""
    aliases: tuple[str, ...] = ()
    option: bool = False

    @property
    def field(self) -> str:
        return self.name.removeprefix("HARNESS_").lower()

    def read(self, env: Mapping[str, str]) -> tuple[str, str]:
        """The variable that is set (ours first, then systemd's names) and its value."""
        return next(((n, env[n]) for n in (self.name, *self.aliases) if env.get(n)), (self.name, ""))
