"""The ranges of numeric settings (head, task, run options), checked wherever settings are
resolved so the library refuses what the CLI refuses: one line naming the setting, its value and
the range, before anything is computed.

A head's settings declare their own ranges, on the fields of its settings dataclass
(``setting``): ``lrs: tuple[float, ...] = setting((1e-3, 1e-2), POSITIVE)``; the head kind checks
them when it resolves settings (``bench.protocol.HeadKind.make_config``) and the dataclass when
it is built (``check_settings`` in its ``__post_init__``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import UsageError


@dataclass(frozen=True)
class Range:
    """The values a numeric setting takes, and how a message states them."""

    text: str
    ok: Callable[[Any], bool]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(least: int) -> Range:
    return Range(f"an integer >= {least}",
                 lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least)


POSITIVE = Range("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Range("a finite number >= 0", lambda v: _number(v) and v >= 0)
FRACTION = Range("a number strictly between 0 and 1", lambda v: _number(v) and 0 < v < 1)
COUNT, COUNT0 = _count(1), _count(0)


def setting(default: Any, rule: Range | None = None, *, when_set: bool = False) -> Any:
    """A field of a head's settings dataclass with its range (a list is checked element by
    element; None is left unchecked). ``when_set``: in a result's identity only where it is
    not ``default`` (a setting added later leaves the identities from before it as they were)."""
    metadata = ({"range": rule} if rule else {}) | ({"when_set": True} if when_set else {})
    return dataclasses.field(default=default, metadata=metadata)


def settings_ranges(config: Any) -> dict[str, Range]:
    """Setting -> its range, from the fields of a settings dataclass (or its class)."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(config)
            if "range" in f.metadata}


def check_settings(config: Any) -> None:
    """``check_ranges`` of a built settings dataclass: the library refuses what the CLI does."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    check_ranges(values, settings_ranges(config), f"head {getattr(config, 'head', '?')!r}:")


TASK_RANGES = {"val_fraction": FRACTION, "test_fraction": FRACTION, "limit": COUNT,
               "max_image_pixels": COUNT0}  # max_image_pixels 0: no limit; limit None: all
BUDGET = Range("a size such as 512MB or 4GB (bytes >= 1), or auto",
               lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1))
OPTION_RANGES = {"batch_size": COUNT, "shard_size": COUNT, "workers": COUNT0,  # 0: in-process
                 "memory_budget": BUDGET}
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int | str:
    """'512MB', '4GB', '1.5GiB', '1000000' or 'auto' -> bytes (or 'auto'); anything else is a
    ``UsageError`` naming the accepted forms."""
    import re

    text = text.strip()
    if text.lower() == "auto":
        return "auto"
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([A-Za-z]*)", text)
    unit = match and SIZE_UNITS.get(match[2].upper())
    if not unit:
        raise UsageError(f"memory size {text!r}: write a number with a unit (512MB, 4GB, "
                         f"1.5GiB; units {', '.join(u for u in SIZE_UNITS if u)}) or auto")
    return int(float(match[1]) * unit)


def parse_numbers(text: str) -> tuple[float, ...]:
    """'1e-3,1e-2' -> (0.001, 0.01): a head option's list of numbers (ranges are checked
    where the settings resolve)."""
    try:
        return tuple(float(v) for v in _items(text))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def parse_integers(text: str) -> list[int]:
    """'1,5,10' -> [1, 5, 10]."""
    try:
        return [int(v) for v in _items(text)]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _items(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def size_text(n: float) -> str:
    """Bytes in the unit people read them in (decimal, as ``parse_size``: 1 GB = 1e9 bytes)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} B"


def check_ranges(values: Mapping[str, Any], ranges: Mapping[str, Range], what: str,
                 flags: Mapping[str, str] | None = None) -> None:
    """A ``UsageError`` naming the first setting outside its range, its value and the range.
    ``flags``: setting -> the CLI flag that sets it, named too."""
    for name, value in values.items():
        rule = ranges.get(name)
        if rule is None or value is None:
            continue
        many = isinstance(value, (list, tuple))
        for one in value if many else [value]:
            if not rule.ok(one):
                flag = f" ({flags[name]})" if flags and name in flags else ""
                shown = f"{name} value {one!r}" if many else f"{name}={one!r}"
                raise UsageError(f"{what} {shown}{flag} is out of range: it must be {rule.text}")
