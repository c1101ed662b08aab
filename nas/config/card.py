"""The vocabulary of a recipe's card (the format of the paper cards the audit checks runs against).

A card is a tuple of `CardEntry`: one hyperparameter as a source states it, with the params path(s)
that hold it and the value each must have (`Equals`, `NotNull`, `Present`, `SameAs`). Sources: [P] the
paper, [A] the first author's development fork of ALBEF, [B] ALBEF / SOHO (MAE, EVA-02, CLIP for MUG
and UTA), [D] a decision of this project. A value that another source used instead is a
`KnownDifference`: the audit labels it as such, not as an error.

Paths are params paths of a resolved config (`nas.config.params.resolve`), read as the stage sees
them: `model.overrides.<field>` is the field of the model as built (the registered variant's defaults
merged with the overrides), and `<stage>.model_overrides.<field>` the same for that stage. Other
sections are read with their dataclass defaults filled in.

`kind`: "paper" ([P] values), "base" ([B] values the paper inherits), "decision" ([A]/[D] choices of the
method), "switch" (a component on/off: off is reported as an ablation, not an error). `requires`: "vd" =
only for models with a visual dictionary; "nva" = only when stage 2 runs NVA (a variant without NVA,
ALBEF or +VD, shows such rows as "n/a").

The cards themselves live beside their recipes: NAS's in nas/recipes/paper_card.py, MUG's and UTA's in
nas/recipes/{mug,uta}/card.py; they register with the audit from nas/recipes/__init__.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["paper", "base", "decision", "switch"]


# ---- what a run value must be ----------------------------------------------------------------------


class _Missing:
    """A path the run config does not have."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def normalize(value: Any) -> Any:
    """Tuples as lists (YAML/JSON have only lists), recursively."""
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def same_value(a: Any, b: Any) -> bool:
    """Equality for config values: floats to 1e-9 relative, bool never equal to a number."""
    a, b = normalize(a), normalize(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


@dataclass(frozen=True)
class Equals:
    value: Any

    def matches(self, value: Any) -> bool:
        return value is not MISSING and same_value(value, self.value)

    def __str__(self) -> str:
        return _show(self.value)


@dataclass(frozen=True)
class NotNull:
    """Any value but null, e.g. the path of pretrained weights (a local file the user provides)."""

    what: str

    def matches(self, value: Any) -> bool:
        return value is not MISSING and value is not None

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Present:
    """The path exists in the run config (a component is part of the model)."""

    what: str

    def matches(self, value: Any) -> bool:
        return value is not MISSING

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class SameAs:
    """The value another params path of the same run holds (e.g. NVA in fine-tuning as in stage 2: on
    for NAS, off for the ablations). The audit fills in `value` from the run config, then compares."""

    path: str
    what: str
    value: Any = MISSING

    def matches(self, value: Any) -> bool:
        return value is not MISSING and self.value is not MISSING and same_value(value, self.value)

    def __str__(self) -> str:
        return self.what if self.value is MISSING else f"{_show(self.value)} ({self.what})"


Expectation = Equals | NotNull | Present | SameAs


def _show(value: Any) -> str:
    value = normalize(value)
    if value is MISSING:
        return "(not set)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{…}"  # a whole section: only its presence matters
    return str(value)


def show(value: Any) -> str:
    """How a run value is written in the audit table."""
    return _show(value)


# ---- the card ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownDifference:
    """What another source used. `path` None (or `value` MISSING) = a note the audit prints only."""

    source: str
    note: str
    path: str | None = None
    value: Any = MISSING


@dataclass(frozen=True)
class CardEntry:
    key: str
    hyperparameter: str
    paper_value: str  # as the source states it
    source: str
    checks: tuple[tuple[str, Expectation], ...]  # (params path, what it must hold); () = no param yet
    kind: Kind = "paper"
    requires: Literal["vd", "nva"] | None = None
    known_differences: tuple[KnownDifference, ...] = ()
    note: str = ""  # why an entry has no check, or how to read it

    def known_value(self, path: str, value: Any) -> KnownDifference | None:
        for diff in self.known_differences:
            if diff.path == path and diff.value is not MISSING and same_value(value, diff.value):
                return diff
        return None


def card_paths(card: Sequence[CardEntry]) -> list[str]:
    """Every params path `card` checks, in card order."""
    return [path for entry in card for path, _ in entry.checks]


def check_card(card: Sequence[CardEntry]) -> None:
    """A card's keys are unique, and a known difference names a path the entry checks (or none)."""
    keys = [entry.key for entry in card]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"card: duplicate keys {duplicates}")
    for entry in card:
        checked = {path for path, _ in entry.checks}
        for diff in entry.known_differences:
            if diff.path is not None and diff.path not in checked:
                raise ValueError(
                    f"card entry {entry.key!r}: known difference on unchecked path {diff.path!r}"
                )
