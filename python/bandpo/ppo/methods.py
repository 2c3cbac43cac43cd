"""The methods the demo compares, as presets of the op's options, and their parsing from the command line.

A method is ``NAME`` or ``NAME:key=value,key=value`` where NAME is a key of :data:`bandpo.PRESETS` (clip,
clip-higher, dcpo, trgppo, band-kl, band-tv, band-chi2) and the keys are fields of
:class:`bandpo.BandConfig` (e.g. ``band-kl:delta=0.1,ratio_max=5`` or ``clip:dual_clip=3``).
"""

from __future__ import annotations

import dataclasses

from .._tables import ALL_OPTIONS
from ..config import PRESETS, BandConfig

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


def parse_method(spec: str, **common) -> tuple[str, BandConfig]:
    """(label, config) for a method spec; `common` holds options applied to every method first."""
    name, _, rest = spec.partition(":")
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; presets: {', '.join(PRESETS)}")
    fields = {f.name: f for f in dataclasses.fields(BandConfig)}
    options = {**common, **PRESETS[name]}
    for item in filter(None, rest.split(",")):
        key, eq, text = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"bad option {item!r} in method {spec!r}; options: {', '.join(fields)}")
        options[key] = _value(key, text, spec)
    return spec, BandConfig(**options)
