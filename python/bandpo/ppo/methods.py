"""The methods the demo compares, as presets of the op's options, and their parsing from the command line.

A method is ``NAME`` or ``NAME:key=value,key=value`` where NAME is a key of :data:`bandpo.PRESETS` (clip,
clip-higher, dcpo, trgppo, band-kl, band-tv, band-chi2) and the keys are fields of
:class:`bandpo.BandConfig` (e.g. ``band-kl:delta=0.1,ratio_max=5`` or ``clip:dual_clip=3``).
"""

from __future__ import annotations

import dataclasses
import math

from ..config import PRESETS, BandConfig

DEFAULT_METHODS = ("clip", "clip-higher", "dcpo", "trgppo", "band-kl")  # the paper's comparison


def _value(field: dataclasses.Field, text: str):
    if field.name == "relax_high_p":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"relax_high_p must be true or false; got {text!r}")
        return text.lower() in ("true", "1")
    if field.name in ("divergence", "agg", "kl_estimator"):
        return text
    if field.name == "dual_clip" and text.lower() == "none":
        return None
    return math.inf if text.lower() == "inf" else float(text)


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
        options[key] = _value(fields[key], text)
    return spec, BandConfig(**options)
