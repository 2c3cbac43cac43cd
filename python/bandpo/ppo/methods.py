"""The methods the demo compares, as presets of the op's options, and their parsing from the command line.

A method is ``NAME`` or ``NAME:key=value,key=value`` where NAME is a key of :data:`bandpo.PRESETS` (clip,
clip-higher, dcpo, trgppo, band-kl, band-tv, band-chi2), or ``band-F`` for another f-divergence F of
``bandpo.f_divergence`` (band-hellinger, band-js, band-reverse_kl: Band-KL's settings, the bounds from
``bandpo.f_divergence_bounds`` given to the loss as ``lower`` / ``upper``), and the keys are fields of
:class:`bandpo.BandConfig` (e.g. ``band-kl:delta=0.1,ratio_max=5`` or ``clip:dual_clip=3``).
"""

from __future__ import annotations

import dataclasses

from .._tables import ALL_OPTIONS
from ..config import PRESETS, BandConfig
from ..f_divergence import NAMED

DEFAULT_METHODS = ("clip", "clip-higher", "dcpo", "trgppo", "band-kl")  # the paper's comparison
_TYPES = {o.name: o.schema_type for o in ALL_OPTIONS}


def _value(name: str, text: str, spec: str):
    """An option's value from its text, by the option's type in the tables (bandpo/tables.h)."""
    kind = _TYPES[name]
    if kind == "str":
        return text
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} in method {spec!r} must be true or false; got {text!r}")
        return text.lower() in ("true", "1")
    if kind == "float?" and text.lower() == "none":
        return None
    try:
        return float(text)  # also "inf"
    except ValueError:
        none = " (or none)" if kind == "float?" else ""
        raise ValueError(f"{name} in method {spec!r} must be a number{none}; got {text!r}") from None


def f_divergence_of(spec: str):
    """The f-divergence whose bounds a method gives the loss (``band-hellinger`` -> "hellinger"), or None for a
    preset (whose bounds the op computes)."""
    name = spec.partition(":")[0]
    f = name.removeprefix("band-")
    return f if name not in PRESETS and name.startswith("band-") and f in NAMED else None


def parse_method(spec: str, **common) -> tuple[str, BandConfig]:
    """(label, config) for a method spec; `common` holds options applied to every method first."""
    name, _, rest = spec.partition(":")
    f = f_divergence_of(spec)
    if name not in PRESETS and f is None:
        others = ", ".join(f"band-{n}" for n in NAMED if f"band-{n}" not in PRESETS)
        raise ValueError(f"unknown method {name!r}; presets: {', '.join(PRESETS)}; f-divergences: {others}")
    fields = {f.name: f for f in dataclasses.fields(BandConfig)}
    options = {**common, **PRESETS["band-kl" if f else name]}
    for item in filter(None, rest.split(",")):
        key, eq, text = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"bad option {item!r} in method {spec!r}; options: {', '.join(fields)}")
        options[key] = _value(key, text, spec)
    return spec, BandConfig(**options)
