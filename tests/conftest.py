import importlib
import os

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


def require_package(name):
    """Skip the calling test module when the optional package ``name`` is missing, unless
    BANDPO_REQUIRE_INTEGRATIONS=1 (ci/test.sh sets it): there a missing trainer package is an error."""
    if os.environ.get("BANDPO_REQUIRE_INTEGRATIONS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"optional package {name} is not installed (pip install bandpo[{name}])")


@pytest.fixture
def batch():
    return make_batch()
