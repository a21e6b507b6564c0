"""How feature points are written, parsed in one place: the pool mini-language (``2``, ``map16``,
``cls+mean``...), layer names with a diffusion timestep (``block24@t90``, ``mid_block@50``), the
ranges and globs that expand to many layers (``block1..37@t90``, ``block24@t0..999:25``,
``blocks.*``), and the layer templates sweep axes fill (``block{block}@t{t}``).

Each value object prints its canonical spelling, which is part of result identities: it must
never change for a spelling accepted before (``tests/test_points.py`` holds them).
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.errors import UsageError

MAP, TOKENS, VECTOR = "map", "tokens", "vector"  # the kinds of a backbone's feature points
POOLS_BY_KIND = {
    MAP: "'1','2','4','8' (average over p x p equal windows, flattened; p must divide the map's "
    "height and width, so windows never overlap), 'mapN' (the same to the largest such p <= N, "
    "kept as a map for attention heads), 'max'",
    TOKENS: "'cls', 'mean' (mean of patch tokens), 'cls+mean', 'tokens' (all tokens kept)",
    VECTOR: "'none'",
}
_SIZED = re.compile(r"(map)?([1-9]\d*)")
_NAMED = {"max": MAP, "cls": TOKENS, "mean": TOKENS, "cls+mean": TOKENS, "tokens": TOKENS,
          "none": VECTOR}


@dataclass(frozen=True)
class Pool:
    """A pool: ``windows`` (``p``: average over p x p windows, flattened), ``map`` (``mapN``:
    the same to the largest fitting p <= N, kept as a map), or a named one (``max``, ``cls``,
    ``mean``, ``cls+mean``, ``tokens``, ``none``)."""

    form: str
    size: int | None = None  # windows: p; map: N

    @classmethod
    def parse(cls, text: str) -> Pool:
        """The pool ``text`` spells (a UsageError for anything else)."""
        sized = _SIZED.fullmatch(text) if isinstance(text, str) else None
        if sized:
            return cls("map" if sized.group(1) else "windows", int(sized.group(2)))
        if text in _NAMED:
            return cls(text)
        raise UsageError(f"pool {text!r}: use one of {'; '.join(POOLS_BY_KIND.values())}")

    def __str__(self) -> str:
        if self.form == "windows":
            return str(self.size)
        return f"map{self.size}" if self.form == "map" else self.form

    @property
    def keeps_map(self) -> bool:
        """A (C, h, w) map per image (``mapN``), not one vector."""
        return self.form == "map"

    def applies(self, kind: str, has_cls: bool = False) -> bool:
        """Whether this pool applies to a feature point of ``kind`` (``has_cls``: tokens whose
        first is a CLS token)."""
        if self.form in ("windows", "map"):
            return kind == MAP
        return _NAMED[self.form] == kind and (has_cls or "cls" not in self.form)


_TIMESTEP = re.compile(r"t?(\d+)")


@dataclass(frozen=True)
class LayerName:
    """A layer of a diffusion backbone: a module and the timestep its input was noised to
    (``block24@t90``; ``@90`` is the same, no suffix: the backbone's default timestep)."""

    module: str
    t: int | None = None

    @classmethod
    def parse(cls, text: str, example: str = "") -> LayerName:
        """``MODULE``, ``MODULE@tT`` or ``MODULE@T`` (spaces around either part ignored); a
        malformed one is a UsageError showing ``example``, a name of the backbone at hand."""
        base, _, suffix = str(text).strip().partition("@")
        match = _TIMESTEP.fullmatch(suffix.strip()) if suffix else None
        if suffix and match is None:
            shown = f", e.g. {example}" if example else ""
            raise UsageError(f"layer {text!r}: write MODULE@tT{shown}")
        return cls(base.strip(), int(match.group(1)) if match else None)

    def __str__(self) -> str:
        return self.module if self.t is None else f"{self.module}@t{self.t}"


_RANGE = re.compile(r"(\d+)\.\.(\d+)(?::(\d+))?")


def expand_layers(specs: Sequence[str], names: Callable[[], Sequence[str]],
                  owner: str) -> list[str]:
    """Layer specs -> layer names: ``a..b`` and ``a..b:step`` ranges (inclusive of ``b`` when the
    step lands on it; several ranges in one spec give their product), globs over ``names()``
    (the layers of backbone ``owner``), anything else as typed."""
    out: list[str] = []
    for spec in specs:
        match = _RANGE.search(spec)
        if match:
            lo, hi, step = int(match[1]), int(match[2]), int(match[3] or 1)
            if hi < lo or step < 1:
                raise UsageError(f"layer range {match[0]!r}: write low..high[:step], low <= high")
            out += expand_layers([spec[:match.start()] + str(v) + spec[match.end():]
                                  for v in range(lo, hi + 1, step)], names, owner)
        elif any(c in spec for c in "*?["):
            known = list(names())
            found = fnmatch.filter(known, spec)
            if not found:
                raise UsageError(f"layer pattern {spec!r} matches none of {owner}'s "
                                 f"layers: {', '.join(known)}")
            out += found
        else:
            out.append(spec)
    return out


@dataclass(frozen=True)
class LayerTemplate:
    """A preset's layer names as a template of sweep axes (``block{block}@t{t}``: axes ``block``
    and ``t``); the parts around ``@`` are filled only when all their axes are given."""

    text: str

    def _parts(self) -> list[tuple[str, set[str]]]:
        return [(part, {f for _, f, _, _ in string.Formatter().parse(part) if f})
                for part in self.text.split("@")]

    @property
    def axes(self) -> set[str]:
        return set().union(*(fields for _, fields in self._parts()))

    def fill(self, values: dict[str, str]) -> str:
        """The layer name of these axis values."""
        return "@".join(part.format(**values) for part, fields in self._parts()
                        if fields and fields <= set(values))

    def pattern(self) -> re.Pattern[str]:
        """A regex of the names the template makes, each axis a number."""
        parts = []
        for literal, name, _, _ in string.Formatter().parse(self.text):
            parts.append(re.escape(literal))
            if name:
                parts.append(r"\d+")
        return re.compile("".join(parts))
