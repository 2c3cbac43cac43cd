"""The PPO demo (python -m bandpo.ppo): sampling, masks, advantages, the mechanism BandPO is about, the
entry point end to end, reproducibility, resume, and data-parallel gradients equal to single-process ones."""

import dataclasses
import gc
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bandpo import band_loss

from bandpo.ppo import cli
from bandpo.ppo.evaluate import evaluate, pass_at_k
from bandpo.ppo.methods import f_divergence_of, parse_method
from bandpo.ppo.model import CausalLM
from bandpo.ppo.rollout import group_advantages, response_mask, sample, token_logprobs
from bandpo.ppo.settings import QUICK, RunConfig
from bandpo.ppo.task import EOS, PAD, SEP, VOCAB_SIZE, SortTask, ZigzagTask, is_held_out, is_zigzag
from bandpo.ppo.train import policy_loss, rl_run
from bandpo.ppo.warm_start import cached_warm_start, warm_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def quick(tmp_path):
    """Arguments of a run of seconds, its warm starts cached under tmp_path."""
    return ["--quick", "--cache-dir", str(tmp_path / "cache")]


def test_response_mask_stops_after_the_first_eos():
    responses = torch.tensor([[1, 2, EOS, 3, EOS], [4, 5, 6, 7, 8], [EOS, 1, 1, 1, 1]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask(responses), want)


def test_group_advantages_are_normalised_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    assert torch.allclose(adv.view(2, 4).mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(adv[:4].std(unbiased=False), torch.tensor(1.0), atol=1e-4)
    assert torch.all(adv[4:] == 0)  # a constant group carries no signal


def test_task_prompts_rewards_and_demonstrations():
    task = SortTask(min_len=3, max_len=5)
    g = torch.Generator().manual_seed(0)
    prompts = task.sample_prompts(50, g)
    assert prompts.shape == (50, task.prompt_len) and torch.all(prompts[:, -1] == SEP)
    answers = torch.full((50, task.response_len), PAD)
    for i, p in enumerate(prompts):
        a = task.answer(p)
        assert a[:-1] == sorted(a[:-1]) and a[-1] == EOS and 3 <= len(a) - 1 <= 5
        answers[i, : len(a)] = torch.tensor(a)
    assert torch.all(task.rewards(prompts, answers) == 1)
    answers[:, 0] = (answers[:, 0] + 1) % 10
    assert torch.all(task.rewards(prompts, answers) == 0)
    demos = [task.demonstration(p, g) for p in prompts]
    right = sum(d == task.answer(p) for d, p in zip(demos, prompts))
    assert 0 < right < 50  # imperfect, but not useless
    assert not any(is_held_out(task.prompt_digits(p)) for p in prompts)


def test_zigzag_right_answers_and_demonstrations():
    task = ZigzagTask()
    digits = [7, 1, 5, 3, 2]
    # every arrangement of the digits that alternates up and down is right: 2 E_5 = 32 of the 120
    right = [perm for perm in itertools.permutations(digits) if task.is_right(digits, perm + (EOS,))]
    assert len(right) == 32 and all(is_zigzag(list(perm)) for perm in right)
    counts = {k: sum(is_zigzag(list(perm)) for perm in itertools.permutations(range(k))) for k in (4, 5, 6)}
    assert counts == {4: 10, 5: 32, 6: 122}  # 2 x the Euler zigzag numbers 5, 16, 61
    assert ZigzagTask.canonical(digits) == [1, 3, 2, 7, 5] and ZigzagTask.canonical([4, 0, 9, 2]) == [0, 4, 2, 9]
    assert not task.is_right(digits, (1, 2, 3, 5, 7, EOS))  # sorted: a digit set, but no zigzag
    assert not task.is_right(digits, (1, 3, 2, 7, EOS))  # a digit missing
    assert not task.is_right(digits, (1, 3, 2, 7, 5))  # no EOS
    g = torch.Generator().manual_seed(0)
    prompts = task.sample_prompts(400, g)
    assert all(len(set(task.prompt_digits(p))) == len(task.prompt_digits(p)) for p in prompts)  # distinct digits
    demos = [tuple(task.demonstration(p, g)) for p in prompts]
    right = [task.is_right(task.prompt_digits(p), d) for p, d in zip(prompts, demos)]
    canonical = [d[:-1] == tuple(task.canonical(task.prompt_digits(p))) for p, d in zip(prompts, demos)]
    # right about half of the time (plus mistakes right by chance), and mostly with the canonical answer
    assert 0.5 <= sum(right) / 400 <= 0.7 and 0.25 <= sum(canonical) / 400 <= 0.4
    rewards = task.rewards(prompts, torch.tensor([list(d) + [PAD] * (task.response_len - len(d)) for d in demos]))
    assert rewards.tolist() == [float(r) for r in right]


def test_held_out_prompts_never_reach_training():
    for task in (ZigzagTask(), SortTask()):
        g = torch.Generator().manual_seed(1)
        train = {tuple(sorted(task.prompt_digits(p))) for p in task.sample_prompts(300, g)}
        held = {tuple(sorted(task.prompt_digits(p))) for p in task.sample_prompts(100, g, split="eval")}
        assert train and held and not train & held
        assert all(is_held_out(list(d)) for d in held)


def test_pass_at_k_estimator():
    assert pass_at_k(16, 0, 8) == 0.0 and pass_at_k(16, 16, 1) == 1.0 and pass_at_k(16, 4, 1) == 0.25
    assert pass_at_k(16, 1, 8) == pytest.approx(0.5)  # the one right sample is among 8 of 16 half the time
    assert pass_at_k(16, 2, 8) == pytest.approx(1 - math.comb(14, 8) / math.comb(16, 8))
    assert pass_at_k(16, 1, 16) == 1.0
    with pytest.raises(ValueError, match="k = 17"):
        pass_at_k(16, 3, 17)


class _Oracle(torch.nn.Module):
    """Emits a fixed right answer of the zigzag task (its canonical one, or the mirror on odd rows)."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, tokens, cache=None):
        if cache is not None:  # the sampler's cache: here simply the tokens so far
            cache[:] = [tokens if not cache else torch.cat([cache[0], tokens], dim=1)]
            return self.forward(cache[0])[:, -tokens.shape[1] :]
        P = self.task.prompt_len
        logits = torch.full((*tokens.shape, VOCAB_SIZE), -30.0)
        for i, row in enumerate(tokens):
            answer = ZigzagTask.canonical(self.task.prompt_digits(row[:P]))
            answer = (answer if i % 2 == 0 else answer[::-1]) + [EOS] * self.task.response_len
            for t in range(P - 1, tokens.shape[1]):
                logits[i, t, answer[t - P + 1]] = 30.0
        return logits


def test_evaluate_counts_pass_at_k_and_distinct_answers():
    task = ZigzagTask()
    prompts = task.sample_prompts(5, torch.Generator().manual_seed(2), split="eval")
    got = evaluate(_Oracle(task), task, prompts, seed=0)
    assert got == {"pass@1": 1.0, "pass@8": 1.0, "pass@16": 1.0, "distinct@16": 2.0}  # canonical and mirror
    torch.manual_seed(0)
    model = CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, d_model=16, n_layers=1)
    got = evaluate(model, task, prompts, seed=0)  # untrained: rarely right; the estimates stay ordered
    assert 0 <= got["pass@1"] <= got["pass@8"] <= got["pass@16"] <= 1 and 0 <= got["distinct@16"] <= 16
    assert got == evaluate(model, task, prompts, seed=0)  # its own generator: reproducible


def test_warm_start_is_cached_and_the_same(tmp_path):
    task = ZigzagTask()
    cfg = RunConfig(sft_steps=5, sft_batch=8, d_model=16, n_layers=1)
    first, cached = cached_warm_start(task, cfg, 0, torch.device("cpu"), str(tmp_path))
    assert not cached
    again, cached = cached_warm_start(task, cfg, 0, torch.device("cpu"), str(tmp_path))
    assert cached
    fresh = warm_start(task, cfg, 0, torch.device("cpu"))
    for a, b, c in zip(first.state_dict().values(), again.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    other, cached = cached_warm_start(task, cfg, 1, torch.device("cpu"), str(tmp_path))  # another seed: not shared
    assert not cached


def test_sampling_rows_masks_and_log_probs():
    task = SortTask()
    torch.manual_seed(0)
    model = CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, d_model=32, n_layers=1)
    prompts = task.sample_prompts(3, torch.Generator().manual_seed(1))
    roll = sample(model, prompts, 4, task.response_len, torch.Generator().manual_seed(2))
    P = task.prompt_len
    assert roll.sequences.shape == (12, P + task.response_len)
    assert torch.equal(roll.sequences[:, :P], prompts.repeat_interleave(4, 0))  # prompt-major groups
    assert torch.equal(roll.mask, response_mask(roll.sequences[:, P:]))
    torch.testing.assert_close(roll.old_logp, token_logprobs(model, roll.sequences, P))
    assert torch.all(roll.old_logp <= 0) and torch.all(roll.entropy >= 0)


def test_fused_head_log_probs_and_gradients_equal_the_plain_path(tmp_path, quick):
    """--fused-head: the loss's log-probs from hidden states (bandpo.linear_logprob_entropy): the same values,
    entropies and parameter gradients as the model's logits and log_softmax, at temperature != 1 too."""
    task = SortTask()
    torch.manual_seed(0)
    model = CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, d_model=32, n_layers=1)
    roll = sample(
        model,
        task.sample_prompts(4, torch.Generator().manual_seed(1)),
        3,
        task.response_len,
        torch.Generator().manual_seed(2),
    )
    P = task.prompt_len
    for temperature in (1.0, 0.7):
        plain = token_logprobs(model, roll.sequences, P, temperature, with_entropy=True)
        fused = token_logprobs(model, roll.sequences, P, temperature, with_entropy=True, fused_head=True)
        for a, b in zip(fused, plain):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    adv = torch.randn(len(roll.sequences), generator=torch.Generator().manual_seed(3))
    old = roll.old_logp - 0.2
    _, config = parse_method("band-kl")
    grads = []
    for fused_head in (False, True):
        model.zero_grad()
        loss, _, _ = policy_loss(model, roll.sequences, P, old, adv, roll.mask, config, fused_head=fused_head)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    summary = cli.main(
        quick + ["--out", str(tmp_path / "run"), "--seeds", "0", "--no-plots", "--methods", "band-kl", "--fused-head"]
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["fused_head"] is True
    assert summary["methods"]["band-kl"]["seeds"] == 1


def test_cached_forward_equals_the_full_forward():
    """Sampling feeds the prompt, then one token per call, through the key/value cache."""
    torch.manual_seed(0)
    model = CausalLM(VOCAB_SIZE, 20, d_model=32, n_layers=2)
    tokens = torch.randint(0, VOCAB_SIZE, (3, 12))
    cache = []
    steps = [model(tokens[:, :7], cache)] + [model(tokens[:, t : t + 1], cache) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(tokens), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one token per call"):
        model(tokens[:, :2], cache)


def test_one_update_raises_a_rare_good_token_more_with_band_than_with_clip():
    """Several PPO steps on one batch (the ratio leaves 1): a token of old probability 0.05 with a positive
    advantage may grow to p (1 + eps) under clip, but up to its KL band (about 3x at delta 0.05) under Band."""
    old = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.5, 0.0, 0.2]]), -1)
    token = 3
    p_old = old[0, token].exp().item()
    finals = {}
    for method in ("clip", "band-kl"):
        _, config = parse_method(method)
        logits = old.clone().requires_grad_()
        opt = torch.optim.SGD([logits], lr=0.02)  # small steps: r crosses a bound by at most ~2%
        for _ in range(150):
            logp = torch.log_softmax(logits, -1)[:, token]
            loss = band_loss(logp[:, None], old[:, token, None], torch.ones(1, 1), None, config).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        finals[method] = torch.softmax(logits, -1)[0, token].item()
    assert finals["clip"] == pytest.approx(p_old * 1.2, rel=0.05)  # stopped at the clip
    assert finals["band-kl"] > 2.0 * finals["clip"]


def test_entry_point_end_to_end(tmp_path, quick):
    out = tmp_path / "run"
    summary = cli.main(quick + ["--out", str(out), "--seeds", "0", "1", "--no-plots"])
    methods = summary["methods"]
    assert list(methods) == ["clip", "clip-higher", "dcpo", "trgppo", "band-kl"]  # the paper's comparison
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["name"] == "zigzag" and config["run"]["steps"] == 3  # --quick
    for name, m in config["methods"].items():  # the paper's shared settings, the preset's own rule
        assert (m["agg"], m["dual_clip"]) == ("seq-mean-token-mean", 10.0), name
    assert config["methods"]["trgppo"]["relax_high_p"] and config["methods"]["dcpo"]["divergence"] == "dcpo"
    assert set(summary["start"]) == {"pass@1", "pass@8", "pass@16", "distinct@16"}
    for name, m in methods.items():
        assert m["seeds"] == 2 and m["seconds"] > 0
        for key in ("final_reward", "final_entropy", "pass@1", "pass@8", "pass@16", "distinct@16"):
            assert set(m[key]) == {"mean", "std"}, key
        assert m["pass@1"]["mean"] <= m["pass@8"]["mean"] <= m["pass@16"]["mean"]
        assert len(m["clipfrac_lower_by_prob"]) == 5
        lines = (out / name / "seed1.jsonl").read_text().splitlines()
        rec = json.loads(lines[-1])
        assert len(lines) == 3 and rec["step"] == 3
        for key in (
            "reward",
            "entropy",
            "ppo_kl",
            "clipfrac_upper",
            "clipfrac_lower",
            "mean_lower",
            "mean_upper",
            "seconds",
        ):
            assert isinstance(rec[key], float)
        assert len(rec["clipfrac_upper_by_prob"]) == 5 and len(rec["tokens_by_prob"]) == 5
        assert "eval" in json.loads(lines[1]) and "eval" in rec and "eval" not in json.loads(lines[0])  # every 2


def test_plots_and_the_delta_sweep(tmp_path, quick):
    pytest.importorskip("matplotlib")
    summary = cli.main(quick + ["--out", str(tmp_path), "--seeds", "0", "--delta-sweep", "--task", "sort"])
    assert list(summary["methods"]) == ["band-kl:delta=0.01", "band-kl:delta=0.05", "band-kl:delta=0.2"]
    for name in ("training.png", "eval.png", "clipfrac_by_prob.png", "bounds.png", "delta_sweep.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_missing_plot_and_progress_packages_are_said_before_training(tmp_path, quick, monkeypatch, capsys):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util, "find_spec", lambda name, *a: None if name in ("matplotlib", "tqdm") else real(name, *a)
    )
    summary = cli.main(quick + ["--out", str(tmp_path), "--seeds", "0", "--methods", "band-kl"])
    text = capsys.readouterr().out
    assert text.index("matplotlib is not installed") < text.index("warm start, seed 0")
    assert "tqdm is not installed" in text and "no plots: matplotlib is not installed" in text
    assert summary["methods"]["band-kl"]["seeds"] == 1 and (tmp_path / "summary.json").exists()
    assert not list(tmp_path.glob("*.png"))


def test_an_unwritable_cache_is_said_and_skipped(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cli.main(
        [
            "--quick",
            "--cache-dir",
            str(blocker / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--seeds",
            "0",
            "--methods",
            "band-kl",
            "--no-plots",
        ]
    )
    text = capsys.readouterr().out
    assert text.index("cannot be written") < text.index("warm start, seed 0: 20 supervised steps")


def test_bad_settings_fail_before_training(tmp_path, quick, capsys):
    for bad, words in (
        (["--methods", "ppo2"], "unknown method 'ppo2'"),
        (["--min-len", "7"], "min_len and max_len"),
        (["--dual-clip", "0.5"], "dual_clip"),
        (["--agg", "mean"], "agg"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(quick + ["--out", str(tmp_path / "x")] + bad)
        assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help and not action.help.startswith("(default"), action.dest
    for f in dataclasses.fields(RunConfig):
        assert " ".join(f.metadata["help"].split()) in text


def test_same_seed_same_curves(tmp_path, quick):
    args = quick + ["--seeds", "3", "--methods", "band-kl:delta=0.1", "--no-plots"]
    a = cli.main(args + ["--out", str(tmp_path / "a")])
    b = cli.main(args + ["--out", str(tmp_path / "b")])  # the warm start from the cache this time
    assert a == json.loads(json.dumps(a)) and a["methods"].keys() == b["methods"].keys()
    ra = (tmp_path / "a" / "band-kl:delta=0.1" / "seed3.jsonl").read_text().splitlines()
    rb = (tmp_path / "b" / "band-kl:delta=0.1" / "seed3.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_workers_give_the_numbers_of_one_process(tmp_path, quick):
    # seeds side by side in worker processes: each run is one process's deterministic work
    args = quick + ["--seeds", "0", "1", "--methods", "clip", "band-kl", "--no-plots"]
    cli.main(args + ["--out", str(tmp_path / "one"), "--workers", "1"])
    cli.main(args + ["--out", str(tmp_path / "two"), "--workers", "2"])
    strip = lambda path: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if k != "seconds"} for x in path.read_text().splitlines()
    ]
    for method in ("clip", "band-kl"):
        for seed in (0, 1):
            one, two = (strip(tmp_path / d / method / f"seed{seed}.jsonl") for d in ("one", "two"))
            assert one == two and len(one) == 3, (method, seed)


def test_the_committed_experiment_reproduces(tmp_path):
    # The first steps of one committed run of the pre-registered experiment, run again: the same bits where the
    # environment that made them (environment.json) matches this one; elsewhere torch's kernels differ.
    from bandpo.ppo.experiment import environment

    root = os.path.join(ROOT, "docs", "ppo", "experiments", "clip-binds")
    with open(os.path.join(root, "environment.json")) as f:
        made = json.load(f)
    here = environment()
    keys = ("torch", "torch_cpu_capability", "bandpo_cpu_kernels", "machine")
    if any(made[k] != here[k] for k in keys):
        pytest.skip(f"made with {[made[k] for k in keys]}, here {[here[k] for k in keys]}")
    args = ["--methods", "clip", "--seeds", "1", "--steps", "3", "--no-plots", "--cache-dir", str(tmp_path / "c")]
    cli.main(args + ["--out", str(tmp_path / "run")])
    strip = lambda lines: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if k not in ("seconds", "eval")} for x in lines
    ]
    with open(os.path.join(root, "default", "clip", "seed1.jsonl")) as f:
        committed = strip(f.read().splitlines()[:3])
    assert strip((tmp_path / "run" / "clip" / "seed1.jsonl").read_text().splitlines()) == committed


def test_resume_continues_exactly(tmp_path):
    task = SortTask()
    cfg = RunConfig(**{**QUICK, "steps": 4, "sft_steps": 10, "sft_batch": 16, "eval_prompts": 2})
    init = warm_start(task, cfg, 0, torch.device("cpu"))
    evals = task.sample_prompts(2, torch.Generator().manual_seed(0), split="eval")
    _, config = parse_method("band-kl")
    full = rl_run(
        task, cfg, config, 0, init, str(tmp_path / "full.jsonl"), str(tmp_path / "full.pt"), torch.device("cpu"), evals
    )

    class Crash(Exception):
        pass

    def crash_at_3(record):
        if record["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        rl_run(
            task,
            cfg,
            config,
            0,
            init,
            str(tmp_path / "r.jsonl"),
            str(tmp_path / "r.pt"),
            torch.device("cpu"),
            evals,
            on_step=crash_at_3,
        )
    resumed = rl_run(
        task, cfg, config, 0, init, str(tmp_path / "r.jsonl"), str(tmp_path / "r.pt"), torch.device("cpu"), evals
    )
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(resumed) == strip(full)
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]


def _ddp_gradient(rank, world_size, init_file, batch, state, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    task = SortTask()
    model = CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, d_model=32, n_layers=1)
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    seqs, old, adv, mask = (t.chunk(world_size)[rank] for t in batch)
    for agg in ("token-mean", "seq-mean-token-mean"):
        _, config = parse_method("band-kl", agg=agg)
        model.zero_grad()
        loss, _, _ = policy_loss(ddp, seqs, task.prompt_len, old, adv, mask, config)
        loss.backward()
        if rank == 0:
            torch.save([p.grad.clone() for p in model.parameters()], f"{result_file}.{agg}")
    del ddp
    gc.collect()  # see bandpo.ppo.cli: DDP holds the group through reference cycles
    dist.barrier()  # no rank leaves while another still talks to it (gloo aborts on a closed peer)
    dist.destroy_process_group()


def test_data_parallel_gradient_equals_single_process(tmp_path):
    task = SortTask()
    torch.manual_seed(0)
    model = CausalLM(VOCAB_SIZE, task.prompt_len + task.response_len, d_model=32, n_layers=1)
    prompts = task.sample_prompts(8, torch.Generator().manual_seed(5))
    roll = sample(model, prompts, 4, task.response_len, torch.Generator().manual_seed(6))
    adv = torch.randn(len(roll.sequences), generator=torch.Generator().manual_seed(7))
    old = roll.old_logp - 0.3 * torch.rand(roll.old_logp.shape, generator=torch.Generator().manual_seed(8))
    batch = (roll.sequences, old, adv, roll.mask)
    mp.start_processes(
        _ddp_gradient,
        args=(2, str(tmp_path / "pg"), batch, model.state_dict(), str(tmp_path / "g")),
        nprocs=2,
        start_method="spawn",
    )
    for agg in ("token-mean", "seq-mean-token-mean"):
        _, config = parse_method("band-kl", agg=agg)
        model.zero_grad()
        loss, _, _ = policy_loss(model, roll.sequences, task.prompt_len, old, adv, roll.mask, config)
        loss.backward()
        ddp_grads = torch.load(f"{tmp_path / 'g'}.{agg}")
        for p, g in zip(model.parameters(), ddp_grads):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_torchrun_runs_the_entry_point(tmp_path, quick):
    out = tmp_path / "ddp"
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bandpo.ppo"]
        + quick
        + ["--out", str(out), "--seeds", "0", "--methods", "band-kl", "--no-plots"]
    )
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert len((out / "band-kl" / "seed0.jsonl").read_text().splitlines()) == 3


def test_an_f_divergence_method_gives_its_bounds_to_the_loss(tmp_path):
    """band-hellinger: Band-KL's settings with the Hellinger bounds of bandpo.f_divergence_bounds, given to the
    loss as lower/upper; the run's bounds plot takes the same."""
    _, config = parse_method("band-hellinger:delta=0.1")
    assert config.delta == 0.1 and f_divergence_of("band-hellinger:delta=0.1") == "hellinger"
    assert f_divergence_of("band-kl") is None
    summary = cli.main(
        ["--quick", "--out", str(tmp_path / "run"), "--seeds", "0", "--no-plots", "--methods", "band-hellinger"]
    )
    assert summary["methods"]["band-hellinger"]["seeds"] == 1
    with pytest.raises(ValueError, match="f-divergences: band-reverse_kl, band-hellinger, band-js"):
        parse_method("band-renyi")


def test_bad_method_spec():
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("ppo2")
    with pytest.raises(ValueError, match="bad option"):
        parse_method("band-kl:colour=red")


def test_settings_precedence_explicit_quick_cuda():
    """Explicit settings win over --quick, which wins over the CUDA sizes, which win over RunConfig's."""
    parser = cli.build_parser()
    cfg = cli.run_config(parser.parse_args(["--d-model", "48"]), torch.device("cuda"))
    assert cfg.d_model == 48 and cfg.prompts == 128 and cfg.n_layers == 4 and cfg.steps == RunConfig().steps
    cfg = cli.run_config(parser.parse_args(["--quick"]), torch.device("cuda"))
    assert cfg.d_model == 32 and cfg.steps == 3 and cfg.n_heads == 8  # quick's where it has one, CUDA's beside
    assert cli.run_config(parser.parse_args([]), torch.device("cpu")) == RunConfig()


def test_a_failing_worker_stops_the_run_with_its_error(tmp_path):
    # seeds in worker processes: a seed that fails (here: a device the model cannot train on) raises its own
    # error in the caller, and the seeds not yet started do not start
    from bandpo.ppo import jobs
    from bandpo.ppo.settings import QUICK

    task, cfg = ZigzagTask(), RunConfig(**QUICK)
    methods = dict([parse_method("clip")])
    prompts = task.sample_prompts(4, torch.Generator().manual_seed(0), split="eval")
    seeds = [jobs.SeedJob(s, task, cfg, methods, str(tmp_path), "meta", None, prompts, 1) for s in range(4)]
    reported = []
    with pytest.raises(NotImplementedError, match="meta tensor"):  # torch's own error, from the worker
        jobs.run_all(seeds, 2, reported.append)
    assert not any(isinstance(r, str) and "seed 3" in r for r in reported)


def test_an_experiment_runs_resumes_and_reports(tmp_path, monkeypatch):
    # a small experiment through the command: per-seed logs, paired comparisons and verdicts, RESULTS.md; run
    # again it trains nothing (the logs stay as they are); other settings are refused beside --experiment
    import dataclasses

    from bandpo.ppo import experiment

    base = experiment.EXPERIMENTS["clip-binds"]
    tiny = dataclasses.replace(
        base,
        regimes={"a": ["--quick"], "b": ["--quick", "--ppo-epochs", "2"]},
        seeds=(0, 1),
        methods=("clip", "band-kl", "band-hellinger"),
        work={"a": 1.0, "b": 2.0},
    )
    monkeypatch.setitem(experiment.EXPERIMENTS, "tiny", tiny)
    args = ["--experiment", "tiny", "--out", str(tmp_path / "x"), "--cache-dir", str(tmp_path / "cache")]
    summary = cli.main(args)
    assert list(summary) == ["a", "b"]
    for r in summary.values():
        assert set(r["versus_clip"]) == {"band-kl", "band-hellinger"}
        c = r["versus_clip"]["band-kl"]["distinct@16"]
        assert c["low"] <= c["mean"] <= c["high"] and c["n"] == 2
        assert set(r["hypotheses"]) == {"H1", "H2", "H3"}
    assert "## Regime b (--quick --ppo-epochs 2)" in (tmp_path / "x" / "RESULTS.md").read_text()
    log = tmp_path / "x" / "b" / "band-hellinger" / "seed1.jsonl"
    before = log.read_text()
    assert len(before.splitlines()) == 3
    assert cli.main(args) == json.loads(json.dumps(summary))  # resumed: nothing left to train, the same analysis
    assert log.read_text() == before
    with pytest.raises(SystemExit):
        cli.main(args + ["--steps", "5"])


def test_paired_statistics():
    from bandpo.ppo.stats import paired, sign_test

    assert sign_test(8, 0) == 2 / 256 and sign_test(4, 4) == 1.0 and sign_test(0, 0) == 1.0
    c = paired([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.0])
    assert c["mean"] == pytest.approx(0.625) and (c["wins"], c["losses"], c["ties"]) == (4, 0, 0)
    assert 0.5 <= c["low"] <= c["mean"] <= c["high"] <= 1.0  # within the differences' range
    assert paired([1.0, 2.0], [1.0, 2.0])["ties"] == 2
    with pytest.raises(ValueError, match="one value per seed"):
        paired([1.0], [1.0, 2.0])
