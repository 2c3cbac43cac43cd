"""bandpo.integrations.trl against the real TRL (pinned in ci/integrations-constraints.txt), on the CPU.

The real GRPOTrainer loop runs two steps with a tiny randomly initialised Llama built from a config and a
word-level tokenizer built here (nothing is downloaded). In every step the probe also computes TRL's own
GRPOTrainer loss on the same inputs (old log-probs and advantages perturbed so that both clip sides are
active): with band_divergence="clip" loss and gradient must equal TRL's for every loss_type.
"""

import os

import pytest
import torch

from conftest import require_package

require_package("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,  # noqa: E402
    PreTrainedTokenizerFast,
)
from trl import GRPOConfig, GRPOTrainer, TrlParser  # noqa: E402

import bandpo  # noqa: E402
from bandpo.integrations.trl import BandGRPOConfig, BandGRPOTrainer, band_config_from_args  # noqa: E402

WORDS = "a b c d e f g h i j".split()


def tiny_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def tiny_model(seed=0, mixture_of_experts=False):
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=4 + len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if mixture_of_experts:  # TRL adds the router's load-balancing loss for these
        return MixtralForCausalLM(
            MixtralConfig(num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.05, **shape)
        )
    return LlamaForCausalLM(LlamaConfig(**shape))


def count_a_reward(completions, **kwargs):
    return [float(c.split().count("a")) + 0.1 * len(c.split()) for c in completions]


def prompts():
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (3,), generator=g)) for _ in range(16)]
    return Dataset.from_dict({"prompt": rows})


def make_args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
    )
    settings.update(overrides)
    return BandGRPOConfig(**settings)


class ParityProbe(BandGRPOTrainer):
    """Runs the real training loop; each step also evaluates TRL's GRPOTrainer loss on the same inputs."""

    def __init__(self, *args, sampler_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self.zero_weight_fractions = []
        self.sampler_weights = sampler_weights  # None, "token" or "sequence": fake vLLM IS-correction ratios

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        g = torch.Generator().manual_seed(len(self.records))
        inputs = dict(inputs)
        B, T = inputs["completion_ids"].shape
        with torch.no_grad():
            logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model,
                torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
                torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                T,
                compute_entropy=True,
            )
        inputs["old_per_token_logps"] = (logps + 0.5 * torch.randn(B, T, generator=g)).clamp(max=0)
        inputs["advantages"] = torch.randn(B, generator=g)
        if self.sampler_weights is not None:
            # What vLLM generation with vllm_importance_sampling_correction puts in the inputs (a row of 0s, as
            # its *_mask modes give); the flags are raised only around the loss, as generation here is not vLLM.
            shape = (B, T) if self.sampler_weights == "token" else (B, 1)
            ratio = 2 * torch.rand(shape, generator=g)
            ratio[0] = 0.0
            inputs["importance_sampling_ratio"] = ratio
            self.use_vllm = self.vllm_importance_sampling_correction = True
        params = [p for p in model.parameters() if p.requires_grad]
        try:
            ours = super().compute_loss(model, inputs)
            theirs = GRPOTrainer.compute_loss(self, model, inputs)
            weights = self._loss_weights(
                inputs,
                logps,
                inputs["old_per_token_logps"],
                inputs["advantages"],
                inputs["completion_mask"] != 0,
                entropies,
            )
        finally:
            self.use_vllm = False
        if weights is not None:
            self.zero_weight_fractions.append(float((weights == 0).float().mean()))
        ours_grad = torch.autograd.grad(ours, params, retain_graph=True)
        theirs_grad = torch.autograd.grad(theirs, params)
        self.records.append((ours.detach(), theirs.detach(), ours_grad, theirs_grad))
        return ours


def train_probe(tmp_path, sampler_weights=None, mixture_of_experts=False, **overrides):
    model = tiny_model(mixture_of_experts=mixture_of_experts)
    if overrides.get("beta", 0.0) != 0.0:  # TRL loads the reference model by name: give it a local folder
        model.save_pretrained(tmp_path / "model")
        model = str(tmp_path / "model")
    trainer = ParityProbe(
        model=model,
        reward_funcs=count_a_reward,
        args=make_args(tmp_path, **overrides),
        train_dataset=prompts(),
        processing_class=tiny_tokenizer(),
        sampler_weights=sampler_weights,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(trainer.records) == 2 * trainer.args.gradient_accumulation_steps
    return trainer


def assert_equal_to_trl(trainer):
    """Every step's loss and parameter gradients equal those of TRL's own GRPOTrainer loss."""
    for ours, theirs, ours_grad, theirs_grad in trainer.records:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        for a, b in zip(ours_grad, theirs_grad):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_clip_mode_loss_and_gradient_equal_trl(tmp_path, loss_type, accumulation):
    trainer = train_probe(
        tmp_path,
        loss_type=loss_type,
        band_divergence="clip",
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=4 // accumulation,
    )
    assert all(ours != 0 for ours, _, _, _ in trainer.records)
    assert_equal_to_trl(trainer)
    history = [row for row in trainer.state.log_history if "loss" in row]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in history)
    clipped = [row["clip_ratio/region_mean"] for row in history]
    assert all(0 < c < 1 for c in clipped), clipped


def test_clip_mode_with_accumulation_dual_clip_and_kl_equals_trl(tmp_path):
    trainer = train_probe(
        tmp_path,
        loss_type="dapo",
        band_divergence="clip",
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        delta=1.6,
        beta=0.05,
    )
    assert_equal_to_trl(trainer)
    assert any("kl" in row for row in trainer.state.log_history)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(
    "sampler_weights, masks",
    [
        ("token", {}),
        ("sequence", {}),
        (None, {"top_entropy_quantile": 0.5}),
        (None, {"off_policy_mask_threshold": 0.05}),
        ("token", {"top_entropy_quantile": 0.7, "off_policy_mask_threshold": 0.05}),
    ],
)
def test_clip_mode_with_loss_weights_equals_trl(tmp_path, loss_type, sampler_weights, masks):
    """vLLM importance-sampling ratios, the entropy mask and the off-policy mask weight the tokens' losses."""
    trainer = train_probe(tmp_path, sampler_weights, loss_type=loss_type, band_divergence="clip", beta=0.05, **masks)
    # the weights do weight: some tokens' losses are dropped (masks, or vLLM ratios set to 0), not all
    fractions = trainer.zero_weight_fractions
    assert fractions and all(f < 1 for f in fractions) and any(f > 0 for f in fractions), fractions
    assert_equal_to_trl(trainer)


def test_mixture_of_experts_aux_loss_equals_trl(tmp_path):
    trainer = train_probe(
        tmp_path,
        mixture_of_experts=True,
        loss_type="grpo",
        band_divergence="clip",
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
    )
    assert trainer.aux_loss_enabled
    assert_equal_to_trl(trainer)
    assert all("aux_loss" in row for row in trainer.state.log_history if "loss" in row)


def test_band_kl_trains_and_logs(tmp_path):
    trainer = train_probe(tmp_path, loss_type="grpo", band_divergence="kl", band_delta=0.05)
    history = [row for row in trainer.state.log_history if "loss" in row]
    for name in (
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_max",
        "entropy",
        "band/upper_bound_mean",
    ):
        assert all(name in row for row in history), name
    assert all(row["band/upper_bound_mean"] > 1 for row in history)
    # the Band bounds are not TRL's interval: the losses differ once tokens are clipped
    assert any(not torch.isclose(ours, theirs) for ours, theirs, _, _ in trainer.records)


def test_dcpo_takes_trls_epsilons(tmp_path):
    """band_divergence="dcpo": DCPO's bounds with eps_low = epsilon, eps_high = epsilon_high (bandpo.PRESETS)."""
    args = BandGRPOConfig(
        output_dir=str(tmp_path), band_divergence="dcpo", epsilon=0.16, epsilon_high=0.2, report_to="none", use_cpu=True
    )
    assert band_config_from_args(args) == bandpo.BandConfig.preset("dcpo")


def test_plain_grpo_config_gets_band_defaults(tmp_path):
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_steps=1,
        report_to="none",
        use_cpu=True,
    )
    trainer = BandGRPOTrainer(
        model=tiny_model(),
        reward_funcs=count_a_reward,
        args=args,
        train_dataset=prompts(),
        processing_class=tiny_tokenizer(),
    )
    assert (trainer.band_config.divergence, trainer.band_config.delta) == ("kl", 0.05)


def test_trl_parser_reads_band_arguments(tmp_path):
    (args,) = TrlParser((BandGRPOConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--band_divergence",
            "tv",
            "--band_delta",
            "0.1",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
        ]
    )
    assert (args.band_divergence, args.band_delta) == ("tv", 0.1)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"band_delta": -1.0}, "delta must be in "),
        ({"band_divergence": "js"}, "divergence must be one of"),
        ({"delta": 1.1}, "delta .* must be > 1 \\+ epsilon_high"),
    ],
)
def test_bad_band_settings_fail_in_the_config(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **setting)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"loss_type": "cispo"}, "loss_type='cispo'"),
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
        ({"entropy_coef": 0.01}, "entropy bonus"),
    ],
)
def test_unsupported_settings_are_refused(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        BandGRPOTrainer(
            model=tiny_model(),
            reward_funcs=count_a_reward,
            args=make_args(tmp_path, **setting),
            train_dataset=prompts(),
            processing_class=tiny_tokenizer(),
        )


def test_band_lm_head_gives_trls_log_probs_and_gradients(tmp_path):
    # band_lm_head=True: the trainer's per-token log-probs and entropies come from bandpo.linear_logprob_entropy
    # in place of TRL's chunked kernel; the same values and parameter gradients, at a temperature != 1; the swap
    # is undone after each call; training runs with it. bf16=False: TRL's default bf16 autocast runs its head's
    # forward in bf16 and its backward's recompute in float32, which moves its gradients by about 1e-3 (bandpo's
    # op casts its inputs to autocast's dtype and runs both in it: test_lm_head.py).
    trainer = train_probe(
        tmp_path, loss_type="grpo", band_divergence="clip", band_lm_head=True, temperature=0.7, bf16=False
    )
    from trl.trainer import utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction

    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbFunction
    assert_equal_to_trl(trainer)  # TRL's loss here runs on the same (bandpo) head: the loss rule is TRL's
    model = trainer.model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 4 + len(WORDS), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    a, c = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for swap in (True, False):
        trainer.args.band_lm_head = swap
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5, compute_entropy=True)
        grads = torch.autograd.grad((logps * a).sum() + (ent * c).sum(), params)
        results.append([logps.detach(), ent.detach(), *grads])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)
