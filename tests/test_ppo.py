"""The PPO demo (python -m bandpo.ppo): sampling, masks, advantages, the mechanism BandPO is about, the
entry point end to end, reproducibility, resume, and data-parallel gradients equal to single-process ones."""

import gc
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bandpo import band_loss

from bandpo.ppo import cli
from bandpo.ppo.methods import parse_method
from bandpo.ppo.model import CausalLM
from bandpo.ppo.rollout import group_advantages, response_mask, sample, token_logprobs
from bandpo.ppo.task import EOS, PAD, SEP, VOCAB_SIZE, SortTask
from bandpo.ppo.train import RunConfig, policy_loss, rl_run, warm_start

TINY = ["--steps", "3", "--prompts", "8", "--group-size", "4", "--sft-steps", "20", "--sft-batch", "32",
        "--d-model", "32", "--n-layers", "1", "--checkpoint-every", "2", "--no-plots"]


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
        answers[i, :len(a)] = torch.tensor(a)
    assert torch.all(task.rewards(prompts, answers) == 1)
    answers[:, 0] = (answers[:, 0] + 1) % 10
    assert torch.all(task.rewards(prompts, answers) == 0)
    demos = [task.demonstration(p, g) for p in prompts]
    right = sum(d == task.answer(p) for d, p in zip(demos, prompts))
    assert 0 < right < 50  # imperfect, but not useless


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


def test_entry_point_end_to_end(tmp_path):
    out = tmp_path / "run"
    summary = cli.main(TINY + ["--out", str(out), "--seeds", "0", "1"])
    methods = summary["methods"]
    assert set(methods) == {"clip", "clip-higher", "band-kl"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for name, m in methods.items():
        assert m["seeds"] == 2 and m["seconds"] > 0
        assert set(m["final_reward"]) == {"mean", "std"} and set(m["final_entropy"]) == {"mean", "std"}
        lines = (out / name / "seed1.jsonl").read_text().splitlines()
        rec = json.loads(lines[-1])
        assert len(lines) == 3 and rec["step"] == 3
        for key in ("reward", "entropy", "ppo_kl", "clipfrac_upper", "clipfrac_lower", "mean_lower", "mean_upper",
                    "seconds"):
            assert isinstance(rec[key], float)
        assert len(rec["clipfrac_upper_by_prob"]) == 5 and len(rec["tokens_by_prob"]) == 5


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    args = [a for a in TINY if a != "--no-plots"] + ["--out", str(tmp_path), "--seeds", "0", "--methods", "band-kl"]
    cli.main(args)
    for name in ("training.png", "clipfrac_by_prob.png", "bounds.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_same_seed_same_curves(tmp_path):
    a = cli.main(TINY + ["--out", str(tmp_path / "a"), "--seeds", "3", "--methods", "band-kl:delta=0.1"])
    b = cli.main(TINY + ["--out", str(tmp_path / "b"), "--seeds", "3", "--methods", "band-kl:delta=0.1"])
    assert a == json.loads(json.dumps(a)) and a["methods"].keys() == b["methods"].keys()
    ra = (tmp_path / "a" / "band-kl:delta=0.1" / "seed3.jsonl").read_text().splitlines()
    rb = (tmp_path / "b" / "band-kl:delta=0.1" / "seed3.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_resume_continues_exactly(tmp_path):
    task = SortTask()
    cfg = RunConfig(steps=4, prompts=8, group_size=4, sft_steps=10, sft_batch=16, d_model=32, n_layers=1,
                    checkpoint_every=2)
    init = warm_start(task, cfg, 0, torch.device("cpu"))
    _, config = parse_method("band-kl")
    full = rl_run(task, cfg, config, 0, init, str(tmp_path / "full.jsonl"), str(tmp_path / "full.pt"),
                  torch.device("cpu"))

    class Crash(Exception):
        pass

    def crash_at_3(record):
        if record["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        rl_run(task, cfg, config, 0, init, str(tmp_path / "r.jsonl"), str(tmp_path / "r.pt"),
               torch.device("cpu"), on_step=crash_at_3)
    resumed = rl_run(task, cfg, config, 0, init, str(tmp_path / "r.jsonl"), str(tmp_path / "r.pt"),
                     torch.device("cpu"))
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
    mp.start_processes(_ddp_gradient, args=(2, str(tmp_path / "pg"), batch, model.state_dict(), str(tmp_path / "g")),
                       nprocs=2, start_method="spawn")
    for agg in ("token-mean", "seq-mean-token-mean"):
        _, config = parse_method("band-kl", agg=agg)
        model.zero_grad()
        loss, _, _ = policy_loss(model, roll.sequences, task.prompt_len, old, adv, roll.mask, config)
        loss.backward()
        ddp_grads = torch.load(f"{tmp_path / 'g'}.{agg}")
        for p, g in zip(model.parameters(), ddp_grads):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_torchrun_runs_the_entry_point(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "bandpo.ppo"] + TINY + ["--out", str(out), "--seeds", "0", "--methods", "band-kl"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert len((out / "band-kl" / "seed0.jsonl").read_text().splitlines()) == 3


def test_help_and_bad_method():
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("ppo2")
    with pytest.raises(ValueError, match="bad option"):
        parse_method("band-kl:colour=red")
