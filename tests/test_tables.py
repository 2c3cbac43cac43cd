"""Every face reads the options, choices and metrics from tables.h: the library's tables (its C ABI), the
compiled op's schema, the numpy face, BandConfig and the C++ defaults all agree, row by row."""

import dataclasses
import inspect
import math

import pytest
import torch

import bandpo
import bandpo.np as bnp
from bandpo import _capi, _tables


def schema_options(op):
    args = op.default._schema.arguments
    return [(a.name, a.default_value) for a in args if a.kwarg_only]


def test_op_schemas_are_the_table():
    table = [(o.name, o.default) for o in _tables.BOUND_OPTIONS]
    assert schema_options(torch.ops.bandpo.band_bounds) == table
    table += [(o.name, o.default) for o in _tables.LOSS_OPTIONS]
    assert schema_options(torch.ops.bandpo.band_loss) == table
    logit = [(o.name, o.default) for o in _tables.LOGIT_OPTIONS]
    assert [o.name for o in _tables.LOGIT_OPTIONS] == ["ignore_index", "logit_scale", "softcap", "temperature"]
    assert schema_options(torch.ops.bandpo.logit_chunk_stats) == logit
    assert schema_options(torch.ops.bandpo.logit_chunk_grad_) == logit + [("logp", None), ("entropy", None)]
    for op in (torch.ops.bandpo.linear_logprob_entropy, torch.ops.bandpo.linear_logprob_entropy_backward):
        assert schema_options(op) == logit + [("chunk_size", 0)]
    # the Python faces' defaults are the rows' (no copy anywhere)
    defaults = {o.name: o.default for o in _tables.LOGIT_OPTIONS}
    for f in (bandpo.linear_logprob_entropy, bandpo.fused_linear_band_loss, bnp.logit_stats, bnp.logit_grad_):
        params = inspect.signature(f).parameters
        assert {k: params[k].default for k in defaults} == defaults, f.__name__
    assert [a.name for a in torch.ops.bandpo.band_loss.default._schema.arguments[:5]] == [
        "logp",
        "old_logp",
        "advantages",
        "mask",
        "ref_logp",
    ]


def test_band_config_fields_are_the_config_rows():
    fields = [(f.name, f.default) for f in dataclasses.fields(bandpo.BandConfig)]
    assert fields == [(o.name, o.default) for o in _tables.ALL_OPTIONS if o.scope == "config"]
    assert "normalizer" not in bandpo.BandConfig().loss_kwargs()


def test_choices_and_metrics():
    assert bandpo.DIVERGENCES == ("kl", "tv", "chi2", "clip", "dcpo")
    assert bandpo.AGGREGATIONS[0] == "token-mean" and len(bandpo.AGGREGATIONS) == 4
    assert bandpo.KL_ESTIMATORS == ("k1", "k2", "k3")
    assert len(bandpo.METRIC_NAMES) == 8 and bandpo.METRIC_NAMES[0] == "pg_clipfrac"
    out = torch.ops.bandpo.band_loss(torch.zeros(3) - 1, torch.zeros(3) - 1, torch.ones(3))
    assert out[1].shape == (len(bandpo.METRIC_NAMES),)
    for name in bandpo.DIVERGENCES:
        torch.ops.bandpo.band_bounds(torch.zeros(2) - 1, divergence=name)
    for agg in bandpo.AGGREGATIONS:
        torch.ops.bandpo.band_loss(torch.zeros(1, 2) - 1, torch.zeros(1, 2) - 1, torch.ones(1, 2), agg=agg)


def test_numpy_face_takes_every_option_by_name():
    import numpy as np

    x = np.full((2, 3), -1.0)
    for o in _tables.ALL_OPTIONS:
        bnp.band_loss(x, x, x, with_grad=False, **{o.name: o.default})
    with pytest.raises(
        TypeError, match="unknown option 'deltaa' \\(did you mean 'delta'\\?\\); the options are divergence, delta"
    ):
        bnp.band_loss(x, x, x, deltaa=0.1)
    with pytest.raises(ValueError, match="delta"):
        _capi.options({"delta": -1.0})


@pytest.mark.parametrize("name", ["normalizer", "dual_clip"])
def test_optional_options_refuse_nan_in_every_face(name):
    import numpy as np

    x = torch.full((2, 3), -1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        torch.ops.bandpo.band_loss(x, x, x, **{name: math.nan})
    with pytest.raises(ValueError, match=name):
        bnp.band_loss(
            np.full((2, 3), -1.0), np.full((2, 3), -1.0), np.full((2, 3), 1.0), with_grad=False, **{name: math.nan}
        )


def test_version_is_one():
    assert bandpo.__version__ == bandpo._C.version() == _capi.version()


def test_tables_come_from_the_library_not_a_header_parse():
    """The Python tables are the library's rows (bandpo_table_get), and the C struct follows their order."""
    rows = _capi.table(_capi.TABLE_OPTIONS)
    every = _tables.ALL_OPTIONS + _tables.LOGIT_OPTIONS
    assert [r.name.decode() for r in rows] == [o.name for o in every]
    assert [f[0] for f in _capi.Options._fields_] == [o.name for o in _tables.ALL_OPTIONS]
    assert [f[0] for f in _capi.LogitOptions._fields_] == [o.name for o in _tables.LOGIT_OPTIONS]
    assert _capi.lib.bandpo_table_size(99) == -1
