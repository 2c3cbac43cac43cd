"""Argument checks of the lm_head op and the fused head+loss: shapes, dtypes, devices and options, each error
naming the argument, all before any GEMM runs."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _capi
from .._tables import DEFAULTS

# Target of the chunk's float32 logits buffer (bytes) when chunk_size is 0: a few such buffers are live at once.
# On the CPU 64 MiB: the chunk's GEMM [n, H] x [H, V] runs near the full GEMM's rate from n = 512 tokens at
# V = 32768 (measured on a 2-core EPYC at H = 512, float32: 256-token chunks took 1.21x the full GEMM's time,
# 512 1.05x; with 64 MiB the op's fwd+bwd went from 1.26x to 1.17x of the plain path at N 4096, its extra
# memory from 1/16 to 1/11 of the plain path's; 128 MiB gave no more speed and 1/7). On a GPU larger: each
# chunk adds its share of d weight into a float32 [V, H] sum, a pass over V H 8 bytes that costs about
# 220 / chunk tokens of the chunk's three GEMMs on an H200 (bf16), so chunks of 2048 tokens at V = 131072
# (measured there: 512 tokens gave 1.82x the three GEMMs alone, 1024 1.48x, 2048 1.35x); the logits buffer is
# then 512 MiB in bf16.
DEFAULT_CHUNK_BYTES = {"cpu": 64 << 20, "other": 1 << 30}
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class LogitOptions(NamedTuple):
    """The transform of the raw logits and the ignored target (tables.h, BANDPO_LOGIT_OPTION_TABLE):
    z = (logit_scale raw, then softcap tanh(. / softcap) when softcap > 0) / temperature."""

    ignore_index: int = DEFAULTS["ignore_index"]
    logit_scale: float = DEFAULTS["logit_scale"]
    softcap: float = DEFAULTS["softcap"]
    temperature: float = DEFAULTS["temperature"]

    @classmethod
    def of(cls, ignore_index, logit_scale, softcap, temperature) -> "LogitOptions":
        """The options as the ops take them (ints within int64, floats), else ValueError naming the option."""
        return cls(int64("ignore_index", ignore_index), float(logit_scale), float(softcap), float(temperature))


class RowGrads(NamedTuple):
    """What a chunk's gradient step takes beside its logits (bandpo.h bandpo_logit_row_grads), [n] each: the
    upstream gradients of its logp and entropy (None counts as 0), and the chunk's own logp and entropy from the
    forward (or None: each row's log-sum-exp and mean logit are then recomputed from the logits)."""

    grad_logp: Optional[Tensor] = None
    grad_entropy: Optional[Tensor] = None
    logp: Optional[Tensor] = None
    entropy: Optional[Tensor] = None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the float inputs, float64 for float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_types(hidden, weight, target, bias) -> None:
    """TypeError naming the argument that is not a tensor (bias may be None)."""
    for name, t in (("hidden", hidden), ("weight", weight), ("target", target), ("bias", bias)):
        if not isinstance(t, Tensor) and not (name == "bias" and t is None):
            raise TypeError(
                f"{name} must be a torch.Tensor{' or None' if name == 'bias' else ''}, got {type(t).__name__}"
            )


def int64(name: str, value) -> int:
    """value as an int that the op's int64 argument takes, else ValueError naming it (the schema's own message for
    an integer beyond int64 names neither the argument nor the range)."""
    v = int(value)
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f"{name} must fit in int64, got {v}")
    return v


def check_options(options: LogitOptions, chunk_size: int) -> None:
    """The transform's options by the core's rules (tables.h; the messages every face gives) and chunk_size."""
    _capi.logit_options(options._asdict())
    if chunk_size < 0:
        raise ValueError(
            f"chunk_size must be >= 0 (0: about {DEFAULT_CHUNK_BYTES['cpu'] >> 20} MiB of logits on the CPU, "
            f"{DEFAULT_CHUNK_BYTES['other'] >> 20} MiB elsewhere), got {chunk_size}"
        )


def check_head(hidden, weight, target, bias) -> None:
    """Validates the head's tensors (shapes, dtypes, devices) before any work, naming the argument."""
    check_types(hidden, weight, target, bias)
    check_head_shapes(hidden, weight, target, bias, FLOATS)
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64, got {target.dtype}")
    for name, t in (("weight", weight), ("target", target), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}")


def check_head_shapes(hidden, weight, target, bias, floats) -> None:
    """The head's shapes and float dtypes, naming the argument: for any arrays with .shape and .dtype (the torch
    op's tensors, bandpo.jax's arrays); floats: the dtypes hidden may have. bias may be None."""
    if len(hidden.shape) != 2:
        raise ValueError(f"hidden must be 2-D [tokens, hidden_size], got shape {tuple(hidden.shape)}")
    if len(weight.shape) != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [vocab, hidden_size] = [V, {hidden.shape[1]}], got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (vocab size 0)")
    if len(target.shape) != 1 or target.shape[0] != hidden.shape[0]:
        raise ValueError(f"target must be 1-D [tokens] = [{hidden.shape[0]}], got shape {tuple(target.shape)}")
    if hidden.dtype not in floats:
        raise ValueError(f"hidden must be float32, bfloat16, float16 or float64, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    if bias is not None:
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must be [vocab] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias must have hidden's dtype {hidden.dtype}, got {bias.dtype}")


def check_targets(target: Tensor, vocab: int, ignore_index: int) -> Optional[Tensor]:
    """Positions whose target is neither in [0, vocab) nor ignore_index. On the CPU they raise here (naming the
    first index; then None is returned); on an accelerator that would need a host sync, so the positions are
    returned and give NaN log-prob and entropy instead (nan_where_bad)."""
    bad = ((target < 0) | (target >= vocab)) & (target != ignore_index)
    if target.device.type != "cpu":
        return bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target[{i}] = {int(target[i])} is outside [0, {vocab}) and is not ignore_index ({ignore_index})"
        )
    return None


def nan_where_bad(values: tuple[Tensor, ...], bad: Optional[Tensor]) -> tuple[Tensor, ...]:
    """Rows with an out-of-range target read NaN off the CPU, where checking them would sync the host (the CPU
    raised in check_targets already; bad is None there)."""
    return values if bad is None else tuple(v.masked_fill(bad, math.nan) for v in values)
