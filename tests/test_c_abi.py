"""The C ABI (bandpo/bandpo.h) of the libbandpo shipped in the package, through ctypes: bit for bit the
results of torch.ops.bandpo on CPU, statuses and the error message; and the CMake package is where
bandpo.cmake_prefix_path() says. Skipped (with the reason) when running from a source tree without the
installed library (the installed package, as ci/test.sh tests it, has it)."""

import ctypes
import math
import os

import numpy as np
import pytest
import torch

import bandpo
from bandpo import _capi
from conftest import make_batch

pytestmark = pytest.mark.skipif(
    not os.path.exists(bandpo.library_path()), reason=f"no {bandpo.library_path()} (not an installed package)"
)


# The structs are _capi's, built from tables.h: these bit-for-bit tests (and bandpo.np's) hold their layout to
# the C header's.
Options, LossInputs = _capi.Options, _capi.LossInputs

DIVS = {name: code for code, name in enumerate(bandpo.DIVERGENCES)}  # the C enum follows tables.h
AGGS = {"token-mean": 0, "seq-mean-token-sum": 1, "seq-mean-token-mean": 2, "seq-mean-token-sum-norm": 3}
DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


@pytest.fixture(scope="module")
def lib():
    lib = ctypes.CDLL(bandpo.library_path())
    lib.bandpo_last_error.restype = ctypes.c_char_p
    lib.bandpo_version.restype = ctypes.c_char_p
    lib.bandpo_band_bounds.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.POINTER(Options),
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.bandpo_band_loss.argtypes = [
        ctypes.POINTER(LossInputs),
        ctypes.POINTER(Options),
        ctypes.POINTER(ctypes.c_double),
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return lib


def ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def options(lib, **kw):
    o = Options()
    lib.bandpo_default_options(ctypes.byref(o))
    for k, v in kw.items():
        setattr(o, k, DIVS[v] if k == "divergence" else AGGS[v] if k == "agg" else v)
    return o


def test_version(lib):
    assert lib.bandpo_version().decode() == bandpo.__version__
    assert lib.bandpo_abi_version() == _capi.ABI_VERSION == 4


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("divergence", list(DIVS))
def test_bounds_bit_for_bit(lib, dtype, divergence):
    _, old, *_ = make_batch(B=3, T=50, dtype=dtype)
    lo, hi = torch.empty_like(old), torch.empty_like(old)
    o = options(lib, divergence=divergence, delta=0.08)
    assert lib.bandpo_band_bounds(DTYPES[dtype], ptr(old), old.numel(), ctypes.byref(o), ptr(lo), ptr(hi)) == 0
    want_lo, want_hi = torch.ops.bandpo.band_bounds(old, divergence=divergence, delta=0.08)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("agg", list(AGGS))
def test_loss_bit_for_bit(lib, dtype, agg):
    logp, old, adv, mask, ref = make_batch(B=4, T=33, seed=6, dtype=dtype)
    adv = adv[:, 0].contiguous()
    mask_u8 = mask.to(torch.uint8)
    o = options(lib, agg=agg, dual_clip=3.0, kl_coef=0.1)
    inputs = LossInputs(DTYPES[dtype], 4, 33, ptr(logp), ptr(old), ptr(adv), 1, ptr(mask_u8), 1, ptr(ref))
    loss = ctypes.c_double()
    metrics = np.zeros(8, dtype=np.float32)
    grad = torch.empty_like(logp)
    status = lib.bandpo_band_loss(
        ctypes.byref(inputs), ctypes.byref(o), ctypes.byref(loss), metrics.ctypes.data_as(ctypes.c_void_p), ptr(grad)
    )
    assert status == 0, lib.bandpo_last_error()
    x = logp.clone().requires_grad_()
    want_loss, want_metrics = torch.ops.bandpo.band_loss(
        x, old, adv, mask, agg=agg, dual_clip=3.0, ref_logp=ref, kl_coef=0.1
    )
    want_loss.backward()
    assert torch.tensor(loss.value, dtype=torch.float64).to(dtype) == want_loss
    assert metrics.tolist() == want_metrics.tolist()
    assert torch.equal(grad, x.grad)


def test_errors_are_statuses_with_messages(lib):
    o = options(lib, delta=-1.0)
    x = torch.tensor([-1.0], dtype=torch.float64)
    assert lib.bandpo_band_bounds(1, ptr(x), 1, ctypes.byref(o), ptr(x.clone()), ptr(x.clone())) == 1
    assert b"delta" in lib.bandpo_last_error()
    o = options(lib)
    logp = torch.tensor([[math.nan, -1.0]], dtype=torch.float64)
    inputs = LossInputs(1, 1, 2, ptr(logp), ptr(logp), ptr(logp), 0, None, 0, None)
    status, message = _loss_status(lib, inputs, o)
    assert status == 1 and "logp[0] is NaN" in message


def test_cmake_package_is_shipped():
    root = bandpo.cmake_prefix_path()
    for rel in (
        "lib/cmake/bandpo/bandpoConfig.cmake",
        "lib/cmake/bandpo/bandpoTargets.cmake",
        "lib/pkgconfig/bandpo.pc",
        "include/bandpo/bandpo.h",
        "include/bandpo/cpu.h",
        "lib/libbandpo.a",
    ):
        assert os.path.exists(os.path.join(root, rel)), rel


def _loss_status(lib, inputs, o, grad=None):
    metrics = np.zeros(8, dtype=np.float32)
    status = lib.bandpo_band_loss(
        ctypes.byref(inputs),
        ctypes.byref(o),
        ctypes.byref(ctypes.c_double()),
        metrics.ctypes.data_as(ctypes.c_void_p),
        grad,
    )
    return status, lib.bandpo_last_error().decode()


@pytest.mark.parametrize("rows,cols", [(1 << 40, 1 << 40), ((1 << 33) + 1, 1 << 31), (2**63 - 1, 2), (-1, 4)])
def test_impossible_sizes_are_invalid_arguments(lib, rows, cols):
    # rows * cols used to wrap in int64: 2^40 x 2^40 returned OK with loss 0
    x = torch.full((4,), -1.0, dtype=torch.float32)
    status, message = _loss_status(
        lib, LossInputs(0, rows, cols, ptr(x), ptr(x), ptr(x), 0, None, 0, None), options(lib)
    )
    assert status == 1 and f"rows = {rows}" in message and "cols" in message, message
    assert lib.bandpo_band_bounds(0, ptr(x), 2**62, ctypes.byref(options(lib)), ptr(x), ptr(x)) == 1


def test_a_workspace_that_cannot_be_allocated_is_out_of_memory(lib):
    # 2^50 rows of one token: a possible size (4 PiB of float32), whose 2^38-item workspace cannot exist.
    # The call fails before it reads any buffer.
    x = torch.full((4,), -1.0, dtype=torch.float32)
    status, message = _loss_status(
        lib, LossInputs(0, 1 << 50, 1, ptr(x), ptr(x), ptr(x), 0, None, 0, None), options(lib)
    )
    assert status == 3 and "could not allocate" in message and "rows = 1125899906842624" in message, message


def test_log_probabilities_above_zero_are_refused(lib):
    logp = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    status, message = _loss_status(
        lib, LossInputs(1, 1, 2, ptr(logp), ptr(old), ptr(old), 0, None, 0, None), options(lib)
    )
    assert status == 1 and "logp[1] = 0.5 > 0 is not a log-probability" in message


@pytest.mark.parametrize(
    "field,value",
    [("normalizer", 1e-300), ("delta", 1e300), ("kl_coef", 1e300), ("delta", math.nan), ("divergence", 9), ("agg", -1)],
)
def test_bad_option_values_name_the_option(lib, field, value):
    x = torch.tensor([[-1.0]], dtype=torch.float64)
    o = options(lib)
    setattr(o, field, value)
    status, message = _loss_status(lib, LossInputs(1, 1, 1, ptr(x), ptr(x), ptr(x), 0, None, 0, None), o)
    assert status == 1 and field in message, message


def _logit_functions(lib):
    """(stats, grad) taking (raw, rows, vocab, row_stride, target, ignore_index, logit_scale, softcap, temperature,
    then the outputs / the four row arrays) as the structs of bandpo.h carry them."""
    from bandpo import _capi

    vp = ctypes.c_void_p
    lib.bandpo_logit_stats.argtypes = [vp, vp, vp, vp, vp]
    lib.bandpo_logit_grad.argtypes = [vp, vp, vp, vp]

    def structs(rows, vocab, row_stride, target, ignore_index, scale, softcap, temperature):
        chunk = _capi.LogitChunk(rows, vocab, row_stride, target)
        return ctypes.byref(chunk), ctypes.byref(_capi.LogitOptions(ignore_index, scale, softcap, temperature))

    def stats(raw, *args_and_outputs):
        return lib.bandpo_logit_stats(raw, *structs(*args_and_outputs[:8]), *args_and_outputs[8:])

    def grad(raw, *args_and_rows):
        rows = _capi.LogitRowGrads(*args_and_rows[8:])
        return lib.bandpo_logit_grad(raw, *structs(*args_and_rows[:8]), ctypes.byref(rows))

    return stats, grad


@pytest.mark.parametrize("transform", [(1.0, 0.0, 1.0), (0.7, 30.0, 0.6)])
def test_logit_chunk_steps_bit_for_bit(lib, transform):
    """bandpo_logit_stats / bandpo_logit_grad (a C++ trainer's own GEMM, then our chunk steps) give the bits of
    torch.ops.bandpo.logit_chunk_stats / logit_chunk_grad_, on rows with a stride (a slice of a wider buffer)
    and an ignored row."""
    stats, grad = _logit_functions(lib)
    scale, softcap, temperature = transform
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(6, 131, generator=g) * 4
    raw = wide[:, :127]  # row_stride 131, vocab 127 (a prime)
    target = torch.tensor([0, 126, -100, 5, 64, 3])
    kw = dict(ignore_index=-100, logit_scale=scale, softcap=softcap, temperature=temperature)
    lp_ref, ent_ref = torch.ops.bandpo.logit_chunk_stats(raw, target, **kw)
    lp, ent = torch.empty(6), torch.empty(6)
    args = (6, 127, 131, ptr(target), -100, scale, softcap, temperature)
    assert stats(ptr(raw), *args, ptr(lp), ptr(ent)) == 0, lib.bandpo_last_error()
    assert torch.equal(lp, lp_ref) and torch.equal(ent, ent_ref)
    assert (lp <= 0).all() and lp[2] == 0 and ent[2] == 0
    gl, ge = torch.randn(6, generator=g), torch.randn(6, generator=g)
    expected = raw.clone()
    torch.ops.bandpo.logit_chunk_grad_(expected, target, gl, ge, logp=lp_ref, entropy=ent_ref, **kw)
    for outputs in ((lp, ent), (None, None)):  # one pass from the outputs, or three from the logits
        got = wide.clone()
        assert grad(ptr(got), *args, ptr(gl), ptr(ge), *(ptr(o) for o in outputs)) == 0, lib.bandpo_last_error()
        torch.testing.assert_close(got[:, :127], expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(got[:, 127:], wide[:, 127:])  # the stride's gap is not written
    got = wide.clone()
    assert grad(ptr(got), *args, ptr(gl), ptr(ge), ptr(lp), ptr(ent)) == 0
    assert torch.equal(got[:, :127], expected)


def test_logit_chunk_step_errors_are_statuses_naming_the_argument(lib):
    stats, grad = _logit_functions(lib)
    raw, out = torch.zeros(2, 8), torch.empty(2)
    bad_target = torch.tensor([1, 8])
    assert stats(ptr(raw), 2, 8, 8, ptr(bad_target), -100, 1.0, 0.0, 1.0, ptr(out), ptr(out.clone())) == 1
    assert b"target[1] = 8 is outside [0, 8)" in lib.bandpo_last_error()
    target = torch.tensor([1, 2])
    for call, word in (
        ((2, 8, 4), b"row_stride = 4 must be >= vocab"),
        ((2, 0, 8), b"vocab = 0"),
        ((-1, 8, 8), b"rows = -1"),
        ((1 << 40, 8, 1 << 40), b"more than one buffer can hold"),
    ):
        assert stats(ptr(raw), *call, ptr(target), -100, 1.0, 0.0, 1.0, ptr(out), ptr(out.clone())) == 1
        assert word in lib.bandpo_last_error(), lib.bandpo_last_error()
    assert stats(ptr(raw), 2, 8, 8, ptr(target), -100, 1.0, 0.0, 0.0, ptr(out), ptr(out.clone())) == 1
    assert b"temperature" in lib.bandpo_last_error()
    assert grad(ptr(raw), 2, 8, 8, ptr(target), -100, 1.0, 0.0, 1.0, None, None, ptr(out), None) == 1
    assert b"logp and entropy come together" in lib.bandpo_last_error()
    assert stats(ptr(raw), 2, 8, 8, ptr(target), -100, 1.0, 0.0, 1.0, None, None) == 1
    assert b"must not be null" in lib.bandpo_last_error()
