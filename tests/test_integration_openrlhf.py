"""bandpo.integrations.openrlhf.BandPolicyLoss against OpenRLHF's own PolicyLoss (openrlhf 0.11.2,
openrlhf/models/loss.py, loaded alone as OpenRLHF's own tests load it: the rest of the package needs DeepSpeed, Ray
and vLLM). With divergence="clip" the two are the same loss: loss, gradient and metrics, token and sample level,
the data-parallel denominators, dual clip and every train/rollout correction."""

import importlib.util
import json
import os
import sys
import types

import pytest
import torch

import bandpo
from bandpo.integrations import openrlhf as band_openrlhf
from conftest import make_batch


def _load_openrlhf_loss():
    if os.environ.get("BANDPO_REQUIRE_INTEGRATIONS") != "1" and importlib.util.find_spec("openrlhf") is None:
        pytest.skip("optional package openrlhf is not installed (pip install --no-deps openrlhf==0.11.2)")
    spec = importlib.util.find_spec("openrlhf")
    assert spec is not None, "openrlhf is required here (ci/test.sh installs it without its dependencies)"
    models = os.path.join(os.path.dirname(spec.origin), "models")
    package = types.ModuleType("_openrlhf_models")
    package.__path__ = [models]
    sys.modules["_openrlhf_models"] = package
    stubbed = "deepspeed" not in sys.modules and importlib.util.find_spec("deepspeed") is None
    if stubbed:  # utils.py imports it at the top; the loss never calls it
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")
    try:
        for name in ("utils", "loss"):
            s = importlib.util.spec_from_file_location(f"_openrlhf_models.{name}", os.path.join(models, f"{name}.py"))
            module = importlib.util.module_from_spec(s)
            sys.modules[f"_openrlhf_models.{name}"] = module
            s.loader.exec_module(module)
    finally:
        if stubbed:
            del sys.modules["deepspeed"]
    return sys.modules["_openrlhf_models.loss"]


openrlhf_loss = _load_openrlhf_loss()


def batch(seed=3, empty_row=True):
    logp, old, adv, mask, _ = make_batch(B=5, T=23, seed=seed, dtype=torch.float64, spread=0.5)
    adv = adv[:, :1].expand(-1, 23).contiguous()  # one advantage per response, per token as OpenRLHF holds it
    if empty_row:
        mask[2] = False  # a response with no tokens: the sample mean skips it
    rollout = old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=old.dtype)
    return logp, old, adv, mask.float(), rollout.clamp(max=0.0)


def both(kwargs, call_kwargs=None, seed=3):
    """(theirs, ours): (loss, grad, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio) for one batch."""
    logp, old, adv, mask, rollout = batch(seed)
    results = []
    for cls in (openrlhf_loss.PolicyLoss, band_openrlhf.BandPolicyLoss):
        extra = {"divergence": "clip"} if cls is band_openrlhf.BandPolicyLoss else {}
        x = logp.clone().requires_grad_()
        loss, clip_ratio, ppo_kl, vllm_kl, filtered = cls(**kwargs, **extra)(
            x, old, adv, action_mask=mask, rollout_log_probs=rollout, **(call_kwargs or {})
        )
        loss.backward()
        results.append((loss.detach(), x.grad, clip_ratio, ppo_kl, vllm_kl, filtered))
    return results


def assert_same(theirs, ours):
    names = ("loss", "grad", "clip_ratio", "ppo_kl", "vllm_kl", "is_filter_ratio")
    for name, a, b in zip(names, theirs, ours):
        if a is None:
            assert b is None, name
            continue
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("token_level_loss", [True, False])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_clip_is_openrlhfs_ppo_loss(token_level_loss, eps, dual_clip):
    kwargs = {"clip_eps_low": eps[0], "clip_eps_high": eps[1], "dual_clip": dual_clip}
    assert_same(*both({**kwargs, "token_level_loss": token_level_loss}))


@pytest.mark.parametrize(
    "token_level_loss,call_kwargs",
    [(True, {"dp_size": 4, "batch_num_tokens": 310.0}), (False, {"dp_size": 2, "global_batch_size": 16.0})],
)
def test_global_denominators_of_data_parallel_steps(token_level_loss, call_kwargs):
    assert_same(*both({"token_level_loss": token_level_loss}, call_kwargs))


@pytest.mark.parametrize(
    "level,mode,gating,threshold",
    [
        ("token", "mask", "ratio", (0.5, 2.0)),
        ("token", "clip", "ratio", (0.5, 2.0)),
        ("seq", "mask", "ratio", (0.7, 1.5)),
        ("token", "mask", "binary_kl", (0.0, 0.05)),
        ("seq", "mask", "tv", (0.0, 0.25)),
    ],
)
@pytest.mark.parametrize("token_level_loss", [True, False])
def test_train_rollout_corrections_as_openrlhf(level, mode, gating, threshold, token_level_loss):
    kwargs = {
        "token_level_loss": token_level_loss,
        "is_correction_level": level,
        "is_correction_mode": mode,
        "is_correction_gating": gating,
        "is_correction_threshold": threshold,
    }
    theirs, ours = both(kwargs)
    assert theirs[4] is not None and 0 < float(theirs[5]) < 1  # the gate drops some units, not all
    assert_same(theirs, ours)


def test_band_kl_is_band_loss_with_openrlhfs_denominators():
    logp, old, adv, mask, _ = batch()
    valid_rows = float((mask.sum(-1) > 0).sum())
    for token_level_loss, agg, normalizer in ((True, "token-mean", None), (False, "seq-mean-token-mean", valid_rows)):
        x, y = logp.clone().requires_grad_(), logp.clone().requires_grad_()
        loss, clip_ratio, *_ = band_openrlhf.BandPolicyLoss(token_level_loss=token_level_loss, delta=0.05)(
            x, old, adv, action_mask=mask
        )
        loss.backward()
        want = bandpo.band_loss(y, old, adv, mask.bool(), agg=agg, normalizer=normalizer, eps_low=0.2, eps_high=0.2)
        want.loss.backward()
        torch.testing.assert_close(loss, want.loss, rtol=1e-7, atol=0)  # OpenRLHF's count + 1e-8
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-7, atol=1e-15)
    # Band-KL clips fewer rare tokens than [0.8, 1.2]: the clip fraction of the same step is lower
    _, clip_fraction_clip, *_ = band_openrlhf.BandPolicyLoss(divergence="clip")(logp, old, adv, action_mask=mask)
    assert float(clip_ratio) < float(clip_fraction_clip)


def test_refusals_name_the_setting():
    with pytest.raises(ValueError, match="policy_loss_type must be 'ppo'"):
        band_openrlhf.BandPolicyLoss(policy_loss_type="gspo")
    with pytest.raises(ValueError, match="is_correction_gating must be one of"):
        band_openrlhf.BandPolicyLoss(is_correction_level="token", is_correction_gating="kl")
    with pytest.raises(ValueError, match="delta must be"):
        band_openrlhf.BandPolicyLoss(delta=-1.0)
    logp, old, adv, mask, _ = batch()
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        band_openrlhf.BandPolicyLoss(is_correction_level="token")(logp, old, adv, action_mask=mask)


def test_install_replaces_the_actors_policy_loss_here_and_in_workers(monkeypatch):
    # stand-ins for the two OpenRLHF modules that hold the name (importing the real ones needs DeepSpeed and Ray)
    for name in ("openrlhf.models", "openrlhf.trainer.ray.ppo_actor"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.delenv(band_openrlhf.CONFIG_ENV, raising=False)
    cfg = band_openrlhf.install(divergence="tv", delta=0.1)
    assert sys.modules["openrlhf.trainer.ray.ppo_actor"].PolicyLoss is band_openrlhf.BandPolicyLoss
    assert sys.modules["openrlhf.models"].PolicyLoss is band_openrlhf.BandPolicyLoss
    assert json.loads(os.environ[band_openrlhf.CONFIG_ENV])["delta"] == 0.1 and cfg.divergence == "tv"
    # a worker: its setup hook calls install() with no arguments, and the actor builds the loss with its own
    worker = band_openrlhf.install()
    assert worker == cfg
    loss = sys.modules["openrlhf.trainer.ray.ppo_actor"].PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28)
    assert (loss.config.divergence, loss.config.delta, loss.config.eps_high) == ("tv", 0.1, 0.28)


def test_band_settings_from_the_command_line():
    pairs = ["--band-divergence", "kl", "--band-delta", "0.05", "--band-relax-high-p", "true"]
    assert band_openrlhf.parse_band_settings(pairs) == {"divergence": "kl", "delta": 0.05, "relax_high_p": True}
    with pytest.raises(SystemExit, match="expected --band-KEY"):
        band_openrlhf.parse_band_settings(["--delta", "0.1"])
