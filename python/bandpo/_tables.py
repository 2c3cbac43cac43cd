"""The options, choices and metrics of bandpo, read from their one definition: ``bandpo/tables.h``.

The C++ header (shipped in the package under ``include/``; in a source tree under ``csrc/include``) holds
one row per option; this module parses those rows so that Python (BandConfig, bandpo.reference, the fake
kernels, the numpy face) never repeats a name, default or order. Needs no compiled module and no torch.
``tests/test_tables.py`` checks the parse against the compiled op's schema and the numpy module.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any, NamedTuple


class Option(NamedTuple):
    name: str
    schema_type: str  # "float", "float?", "bool", "str"
    default: Any  # the Python value of the schema default
    scope: str  # "config" (a BandConfig field) or "call" (a per-call argument such as normalizer)


def _header_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "include", "bandpo", "tables.h"),  # installed package
                      os.path.join(here, "..", "..", "csrc", "include", "bandpo", "tables.h")):  # source tree
        if os.path.exists(candidate):
            return candidate
    raise ImportError(f"bandpo: tables.h not found next to {here} (a broken installation?)")


def _macro_body(text: str, name: str) -> str:
    match = re.search(r"#define " + name + r"\(\w+\)((?:.*\\\n)*.*\n)", text)
    if match is None:
        raise ImportError(f"bandpo: {name} missing from tables.h")
    return match.group(1)


def _rows(text: str, name: str) -> list[list[str]]:
    body = _macro_body(text, name)
    rows = []
    for line in body.splitlines():
        m = re.search(r"\w+\((.*)\)\s*\\?\s*$", line)
        if m:
            # Split on commas outside string literals.
            rows.append([c.strip() for c in re.findall(r'(?:"(?:\\.|[^"\\])*"|[^,])+', m.group(1))])
    return rows


def _load():
    with open(_header_path(), encoding="utf-8") as f:
        text = f.read()

    def choices(name):
        return tuple(ast.literal_eval(r[1]) for r in _rows(text, name))

    def options(name):
        return tuple(Option(r[0], ast.literal_eval(r[2]), ast.literal_eval(ast.literal_eval(r[3])), r[5])
                     for r in _rows(text, name))

    constants = {r[1]: float(r[2]) for r in _rows(text, "BANDPO_CONSTANT_TABLE")}
    return (choices("BANDPO_DIVERGENCE_TABLE"), choices("BANDPO_AGGREGATION_TABLE"),
            choices("BANDPO_KL_ESTIMATOR_TABLE"), choices("BANDPO_METRIC_TABLE"),
            options("BANDPO_BOUND_OPTION_TABLE"), options("BANDPO_LOSS_OPTION_TABLE"), constants)


DIVERGENCES, AGGREGATIONS, KL_ESTIMATORS, METRIC_NAMES, BOUND_OPTIONS, LOSS_OPTIONS, CONSTANTS = _load()
# band_loss's options in schema order (band_bounds' first).
ALL_OPTIONS = BOUND_OPTIONS + LOSS_OPTIONS
DEFAULTS = {o.name: o.default for o in ALL_OPTIONS}
