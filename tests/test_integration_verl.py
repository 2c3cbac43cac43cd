"""bandpo.integrations.verl against the real verl package (pinned in ci/integrations-constraints.txt).

Parity: with divergence=clip the registered loss equals verl's own "vanilla" loss (value, gradient, metrics)
for every loss_agg_mode, with and without global batch sizes and rollout weights; with Band-KL it equals
bandpo.reference. The config route is checked by composing verl's own ppo_trainer.yaml with the documented
command-line overrides and converting it the way verl's workers do.
"""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import make_batch, require_package

require_package("verl")

from hydra import compose, initialize_config_dir  # noqa: E402
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

import bandpo  # noqa: E402
from bandpo.integrations import verl as bandpo_verl  # noqa: E402

VERL_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
DOCUMENTED_OVERRIDES = [
    "actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPolicyLossConfig",
    "actor_rollout_ref.actor.policy_loss.loss_mode=bandpo",
]


def actor_config(*overrides):
    """verl's ActorConfig built as its workers build it: compose ppo_trainer.yaml, then omega_conf_to_dataclass."""
    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(
            config_name="ppo_trainer", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", *overrides]
        )
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def verl_batch(seed, B=6, T=40, dtype=torch.float32):
    logp, old, adv, mask, _ = make_batch(B=B, T=T, dtype=dtype, seed=seed, spread=1.0)
    mask[1] = False  # a fully masked row: verl's seq-* modes leave it out of the row count
    return logp, old, adv, mask


def call(loss_fn, config, logp, old, adv, mask, mode, weights=None):
    x = logp.detach().clone().requires_grad_(True)
    loss, metrics = loss_fn(
        old_log_prob=old,
        log_prob=x,
        advantages=adv,
        response_mask=mask,
        loss_agg_mode=mode,
        config=config,
        rollout_is_weights=weights,
    )
    loss.backward()
    return loss.detach(), x.grad, metrics


BATCH_INFOS = [
    {},
    {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None, "loss_scale_factor": None},
    {"dp_size": 4, "batch_num_tokens": 731, "global_batch_size": 19, "loss_scale_factor": None},
    {"dp_size": 2, "batch_num_tokens": 400, "global_batch_size": 11, "loss_scale_factor": 64},
]


@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("info", range(len(BATCH_INFOS)))
@pytest.mark.parametrize("with_weights", [False, True])
def test_clip_mode_equals_verl_vanilla(mode, info, with_weights):
    ours_cfg = actor_config(
        *DOCUMENTED_OVERRIDES,
        "+actor_rollout_ref.actor.policy_loss.divergence=clip",
        "actor_rollout_ref.actor.clip_ratio_high=0.28",
        "actor_rollout_ref.actor.clip_ratio_c=2.5",
    )
    verl_cfg = actor_config("actor_rollout_ref.actor.clip_ratio_high=0.28", "actor_rollout_ref.actor.clip_ratio_c=2.5")
    for cfg in (ours_cfg, verl_cfg):
        cfg.global_batch_info.clear()
        cfg.global_batch_info.update(BATCH_INFOS[info])
    logp, old, adv, mask = verl_batch(seed=10 * info + VERL_MODES.index(mode))
    weights = None
    if with_weights:
        weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)) * 2
    ours_fn = get_policy_loss_fn(ours_cfg.policy_loss.loss_mode)
    assert ours_fn is bandpo_verl.compute_policy_loss_bandpo
    loss, grad, metrics = call(ours_fn, ours_cfg, logp, old, adv, mask, mode, weights)
    ref_loss, ref_grad, ref_metrics = call(compute_policy_loss_vanilla, verl_cfg, logp, old, adv, mask, mode, weights)

    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=2e-6, atol=1e-8)
    for name, value in ref_metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    # the batch exercises both clips and the dual clip
    assert metrics["actor/pg_clipfrac"] > 0.05 and metrics["actor/pg_clipfrac_lower"] > 0.01
    assert set(metrics) >= {"actor/bandpo/clipfrac_upper", "actor/bandpo/clipfrac_lower", "actor/bandpo/ratio_mean"}
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("mode", VERL_MODES)
@pytest.mark.parametrize("divergence", ["kl", "tv", "chi2", "dcpo"])
def test_band_modes_equal_reference(mode, divergence):
    cfg = actor_config(
        *DOCUMENTED_OVERRIDES,
        f"+actor_rollout_ref.actor.policy_loss.divergence={divergence}",
        "+actor_rollout_ref.actor.policy_loss.delta=0.08",
        "+actor_rollout_ref.actor.policy_loss.ratio_max=6",
    )
    logp, old, adv, mask = verl_batch(seed=7, dtype=torch.float64)
    loss, grad, metrics = call(bandpo_verl.compute_policy_loss_bandpo, cfg, logp, old, adv, mask, mode)

    agg, normalizer = bandpo_verl.aggregation_for(mode, mask, {})
    x = logp.detach().clone().requires_grad_(True)
    ref_loss, ref_metrics = bandpo.reference.band_loss(
        x,
        old,
        adv,
        mask,
        divergence=divergence,
        delta=0.08,
        ratio_max=6.0,
        dual_clip=3.0,
        eps_low=0.2,
        eps_high=0.2,
        agg=agg,
        normalizer=normalizer,
    )
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, x.grad, rtol=1e-10, atol=1e-12)
    named = dict(zip(bandpo.METRIC_NAMES, ref_metrics.tolist()))
    assert metrics["actor/pg_clipfrac"] == pytest.approx(named["pg_clipfrac"], abs=1e-7)
    assert metrics["actor/bandpo/clipfrac_upper"] == pytest.approx(named["clipfrac_upper"], abs=1e-7)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(named["dual_clipfrac"], abs=1e-7)
    assert metrics["actor/ppo_kl"] == pytest.approx(named["ppo_kl"], rel=1e-6)


def test_band_kl_differs_from_vanilla_on_rare_tokens():
    """Band-KL lets a rare token with A > 0 grow past 1 + eps: the loss keeps a gradient that vanilla clips."""
    cfg = actor_config(*DOCUMENTED_OVERRIDES)
    verl_cfg = actor_config()
    old = torch.log(torch.tensor([[0.02, 0.02]]))
    logp = torch.log(torch.tensor([[0.02 * 1.5, 0.02 * 1.5]]))
    adv, mask = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    _, grad, metrics = call(bandpo_verl.compute_policy_loss_bandpo, cfg, logp, old, adv, mask, "token-mean")
    _, vanilla_grad, vanilla_metrics = call(compute_policy_loss_vanilla, verl_cfg, logp, old, adv, mask, "token-mean")
    assert vanilla_metrics["actor/pg_clipfrac"] == 1.0 and torch.all(vanilla_grad == 0)
    assert metrics["actor/pg_clipfrac"] == 0.0 and torch.all(grad < 0)


def test_through_verl_ppo_loss():
    """verl's own actor loss entry (workers/utils/losses.ppo_loss) with the documented config: same loss,
    gradient and metrics as with loss_mode=vanilla when divergence=clip; our extra metrics come through."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    B, P, R = 6, 5, 40
    logp, old, adv, mask = verl_batch(seed=3, B=B, T=R)

    def run(cfg):
        full = torch.zeros(B, P + R)
        full[:, P - 1 : P + R - 1] = logp  # the model's log-prob of response token t sits at position P + t - 1
        flat = full.reshape(-1).clone().requires_grad_(True)
        data = tu.get_tensordict(
            tensor_dict={
                "prompts": torch.ones(B, P, dtype=torch.long),
                "responses": torch.ones(B, R, dtype=torch.long),
                "attention_mask": torch.ones(B, P + R, dtype=torch.long),
                "response_mask": mask.long(),
                "old_log_probs": old,
                "advantages": adv,
            },
            non_tensor_dict={"dp_size": 2, "batch_num_tokens": 500, "global_batch_size": 12},
        )
        loss, metrics = ppo_loss(cfg, {"log_probs": flat}, data)
        loss.backward()
        return loss.detach(), flat.grad, {k: m.aggregate() for k, m in metrics.items()}

    loss, grad, metrics = run(
        actor_config(*DOCUMENTED_OVERRIDES, "+actor_rollout_ref.actor.policy_loss.divergence=clip")
    )
    ref_loss, ref_grad, ref_metrics = run(actor_config())
    torch.testing.assert_close(loss, ref_loss, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=2e-6, atol=1e-8)
    assert set(metrics) == set(ref_metrics) | {
        "actor/bandpo/clipfrac_upper",
        "actor/bandpo/clipfrac_lower",
        "actor/bandpo/ratio_mean",
    }
    for name, value in ref_metrics.items():
        assert float(metrics[name]) == pytest.approx(float(value), rel=1e-6, abs=1e-7), name


def test_config_defaults_without_target_and_validation():
    plain = actor_config("actor_rollout_ref.actor.policy_loss.loss_mode=bandpo")
    assert type(plain.policy_loss).__name__ == "PolicyLossConfig"
    band = bandpo_verl.band_config_from_actor(plain)
    assert (band.divergence, band.delta, band.ratio_max, band.dual_clip) == ("kl", 0.05, 10.0, 3.0)

    cfg = actor_config(
        *DOCUMENTED_OVERRIDES,
        "+actor_rollout_ref.actor.policy_loss.delta=0.1",
        "+actor_rollout_ref.actor.policy_loss.relax_high_p=true",
        "actor_rollout_ref.actor.clip_ratio_low=0.15",
    )
    assert isinstance(cfg.policy_loss, bandpo_verl.BandPolicyLossConfig)
    band = bandpo_verl.band_config_from_actor(cfg)
    assert (band.delta, band.relax_high_p, band.eps_low, band.eps_high) == (0.1, True, 0.15, 0.2)

    with pytest.raises(Exception, match="delta must be in "):
        actor_config(*DOCUMENTED_OVERRIDES, "+actor_rollout_ref.actor.policy_loss.delta=-1")
    with pytest.raises(Exception, match="divergence must be one of"):
        actor_config(*DOCUMENTED_OVERRIDES, "+actor_rollout_ref.actor.policy_loss.divergence=js")


def test_documented_yaml_file(tmp_path):
    """The YAML file of the module docstring, verbatim: a user config extending verl's ppo_trainer.yaml."""
    lines = bandpo_verl.__doc__.splitlines()
    first = lines.index("    hydra:")
    block = lines[first : lines.index("", first)]
    (tmp_path / "my_bandpo.yaml").write_text("\n".join(line[4:] for line in block) + "\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="my_bandpo", overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, bandpo_verl.BandPolicyLossConfig)
    assert get_policy_loss_fn(actor.policy_loss.loss_mode) is bandpo_verl.compute_policy_loss_bandpo
    band = bandpo_verl.band_config_from_actor(actor)
    assert (band.divergence, band.delta) == ("kl", 0.05)


def test_errors_name_the_argument():
    cfg = actor_config(*DOCUMENTED_OVERRIDES)
    logp, old, adv, mask = verl_batch(seed=1)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        bandpo_verl.compute_policy_loss_bandpo(old, logp, adv, mask, "token-median", cfg)
    with pytest.raises(ValueError, match="config"):
        bandpo_verl.compute_policy_loss_bandpo(old, logp, adv, mask, "token-mean", None)
    with pytest.raises(ValueError, match="rollout_is_weights"):
        bandpo_verl.compute_policy_loss_bandpo(old, logp, adv, mask, "token-mean", cfg, torch.ones(3))
    cfg.global_batch_info.update(dp_size=2)
    with pytest.raises(ValueError, match="batch_num_tokens is required"):
        bandpo_verl.compute_policy_loss_bandpo(old, logp, adv, mask, "token-mean", cfg)
    cfg.global_batch_info.clear()
    bad = logp.clone()
    bad[0, int(mask[0].nonzero()[0])] = float("nan")
    with pytest.raises(ValueError, match="logp"):
        bandpo_verl.compute_policy_loss_bandpo(old, bad, adv, mask, "token-mean", cfg)


def test_config_pickles_for_ray_workers():
    """Ray ships the config to workers by pickling: unpickling in a fresh process registers the loss."""
    cfg = actor_config(*DOCUMENTED_OVERRIDES, "+actor_rollout_ref.actor.policy_loss.delta=0.07")
    code = (
        "import pickle, sys\n"
        "cfg = pickle.loads(sys.stdin.buffer.read())\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "print(get_policy_loss_fn(cfg.policy_loss.loss_mode).__module__, cfg.policy_loss.delta)\n"
    )
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="none")  # only the unpickling may import bandpo
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(cfg), capture_output=True, env=env, timeout=120, check=True
    )
    assert out.stdout.decode().split() == ["bandpo.integrations.verl", "0.07"]


def _registered_in_fresh_process(env_extra):
    code = "import verl\nfrom verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY\nprint('bandpo' in POLICY_LOSS_REGISTRY)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=dict(os.environ, **env_extra), timeout=120, check=True
    )
    return out.stdout.decode().strip()


def test_external_modules_variable_registers_the_loss():
    assert _registered_in_fresh_process({"VERL_USE_EXTERNAL_PLUGINS": "none"}) == "False"
    assert (
        _registered_in_fresh_process(
            {"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "bandpo.integrations.verl"}
        )
        == "True"
    )


def test_installed_entry_point_registers_the_loss():
    from importlib.metadata import entry_points

    if not any(ep.value == "bandpo.integrations.verl" for ep in entry_points(group="verl.plugins")):
        pytest.skip("bandpo is not installed as a distribution here (source tree); ci/test.sh installs it")
    assert _registered_in_fresh_process({}) == "True"
