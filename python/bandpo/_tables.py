"""The options, choices, metrics and constants of bandpo, read from their one definition (``bandpo/tables.h``)
through the library's C ABI (``bandpo_table_get``): Python (BandConfig, bandpo.reference, the fake kernels, the
numpy face) never repeats a name, default or order. Needs no compiled Python module and no torch.
``tests/test_tables.py`` checks these against the compiled op's schema.
"""

from __future__ import annotations

import ast
from typing import Any, NamedTuple

from . import _capi


class Option(NamedTuple):
    name: str
    schema_type: str  # "float", "float?", "bool", "int", "str"
    default: Any  # the Python value of the schema default
    scope: str  # "config" (a BandConfig field) or "call" (a per-call argument such as normalizer)


def _names(code: int) -> tuple:
    return tuple(row.name.decode() for row in _capi.table(code))


def _options(group: int) -> tuple:
    return tuple(
        Option(r.name.decode(), r.type.decode(), ast.literal_eval(r.default_value.decode()), r.scope.decode())
        for r in _capi.table(_capi.TABLE_OPTIONS)
        if r.group == group
    )


DIVERGENCES = _names(_capi.TABLE_DIVERGENCES)
AGGREGATIONS = _names(_capi.TABLE_AGGREGATIONS)
KL_ESTIMATORS = _names(_capi.TABLE_KL_ESTIMATORS)
METRIC_NAMES = _names(_capi.TABLE_METRICS)
BOUND_OPTIONS = _options(0)
LOSS_OPTIONS = _options(1)
LOGIT_OPTIONS = _options(2)  # the lm_head steps' (linear_logprob_entropy, logit_chunk_stats / logit_chunk_grad_)
CONSTANTS = {row.name.decode(): row.value for row in _capi.table(_capi.TABLE_CONSTANTS)}
# band_loss's options in schema order (band_bounds' first).
ALL_OPTIONS = BOUND_OPTIONS + LOSS_OPTIONS
DEFAULTS = {o.name: o.default for o in ALL_OPTIONS + LOGIT_OPTIONS}
