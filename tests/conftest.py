import importlib
import os
from typing import NamedTuple, Optional

import pytest
import torch

# torch.compile writes its cache under /tmp by default; keep it inside the workspace.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".torchinductor"))

import bandpo  # noqa: E402,F401  (registers torch.ops.bandpo)

# Property tests (hypothesis) against bandpo.reference: "ci" is the default, small enough for CI; "thorough"
# runs 10,000 examples per test, once before a release or after touching the math:
#   BANDPO_HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_loss.py tests/test_exactness.py tests/test_numpy.py -k hypothesis
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=60, deadline=None)
    settings.register_profile(
        "thorough", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("BANDPO_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a test dependency; the modules that use it fail on their own import
    pass

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def make_batch(B=6, T=257, dtype=torch.float64, seed=0, spread=0.5, mask_frac=0.2, device="cpu"):
    """Random PPO batch: old/new log-probs (strictly < 0, no ties at the simplex edge), advantages, mask."""
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64)).clamp(min=-30, max=-1e-4)
    logp = (old + spread * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-4)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > mask_frac
    ref = (old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=-1e-4)
    cast = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
    return cast(logp), cast(old), cast(adv), mask.to(device), cast(ref)


class LossCase(NamedTuple):
    """A random band_loss call of the faces' property tests: its tensors and its options."""

    logp: torch.Tensor
    old: torch.Tensor
    adv: torch.Tensor
    mask: Optional[torch.Tensor]
    ref: Optional[torch.Tensor]
    options: dict


# mixed precision: logp in the first dtype, old_logp, advantages, ref_logp and float weights in the second
MIXED = {"mixed-bf16": (torch.bfloat16, torch.float32), "mixed-f16": (torch.float16, torch.float32)}


def loss_cases(dtypes, mask_cases, max_tokens):
    """Hypothesis strategy of LossCase: 1-4 rows of 1..max_tokens tokens in each of ``dtypes`` (or a MIXED
    name), every divergence and aggregation, a mask as ``mask_cases`` allow ("bool", "uint8", "float" weights,
    "float-huge": those times 1e300 in float64, "none"), per-row advantages, a ref_logp with kl_coef 0.1, a
    normalizer, dual clip."""
    from hypothesis import strategies as st

    @st.composite
    def draw_case(draw):
        seed, rows, tokens = draw(st.integers(0, 100_000)), draw(st.integers(1, 4)), draw(st.integers(1, max_tokens))
        dtype, mask_case = draw(st.sampled_from(dtypes)), draw(st.sampled_from(mask_cases))
        low, high = MIXED.get(dtype, (dtype, dtype))
        logp, old, adv, mask, ref = make_batch(B=rows, T=tokens, seed=seed, dtype=torch.float64)
        logp, old, adv, ref = logp.to(low), old.to(high), adv.to(high), ref.to(high)
        if draw(st.booleans()):
            adv = adv[:, 0].contiguous()
        if mask_case == "uint8":
            mask = mask.to(torch.uint8)
        elif mask_case.startswith("float"):
            mask = mask.to(high) * torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)).to(high)
            if mask_case == "float-huge" and high == torch.float64:
                mask = mask * 1e300
        elif mask_case == "none":
            mask = None
        with_ref = draw(st.booleans())
        options = dict(
            divergence=draw(st.sampled_from(bandpo.DIVERGENCES)),
            agg=draw(st.sampled_from(bandpo.AGGREGATIONS)),
            normalizer=draw(st.sampled_from([None, 37.0])),
            dual_clip=draw(st.sampled_from([None, 3.0])),
            kl_coef=0.1 if with_ref else 0.0,
        )
        return LossCase(logp, old, adv, mask, ref if with_ref else None, options)

    return draw_case()


def loss_options(**overrides):
    """Every option of band_loss / band_loss_backward by name, at its tables.h default unless overridden: for
    opcheck, which should see the whole schema."""
    from bandpo._tables import ALL_OPTIONS

    kw = {o.name: o.default for o in ALL_OPTIONS}
    unknown = set(overrides) - set(kw)
    assert not unknown, f"not band_loss options: {sorted(unknown)}"
    return {**kw, **overrides}


def jax_gpu():
    """jax's first CUDA device, or None where jax has none (call after jax is known to import)."""
    import jax

    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


def require_package(name):
    """Skip the calling test module when the optional package ``name`` is missing, unless
    BANDPO_REQUIRE_INTEGRATIONS=1 (ci/test.sh sets it): there a missing trainer package is an error."""
    if os.environ.get("BANDPO_REQUIRE_INTEGRATIONS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"optional package {name} is not installed (pip install bandpo[{name}])")


@pytest.fixture
def batch():
    return make_batch()
