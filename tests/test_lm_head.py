"""bandpo.linear_logprob_entropy (python/bandpo/lm_head.py): log-probs and entropy from hidden states in chunks,
held to the float64 full-logits reference, to the plain path in the inputs' own dtype, and to gradcheck."""

import doctest
import math

import pytest
import torch

import bandpo
from bandpo import lm_head
from bandpo.lm_head import linear_logprob_entropy, linear_logprob_entropy_reference

OPTIONS = [dict(), dict(temperature=0.7), dict(softcap=3.0, logit_scale=1.5, temperature=1.3), dict(logit_scale=0.5)]


def make(n=300, h=64, v=1009, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) / math.sqrt(h) * 3).to(dtype)
    b = (0.5 * torch.randn(v, generator=g)).to(dtype) if bias else None
    target = torch.randint(0, v, (n,), generator=g)
    target[::17] = -100
    return hidden, weight, target, b


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("chunk_size", [0, 64, 7])
def test_float32_matches_the_float64_reference(opts, chunk_size):
    hidden, weight, target, bias = make()
    logp, ent = linear_logprob_entropy(hidden, weight, target, bias, chunk_size=chunk_size, **opts)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ent.shape == target.shape
    want_logp, want_ent = linear_logprob_entropy_reference(hidden, weight, target, bias, **opts)
    torch.testing.assert_close(logp.double(), want_logp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=2e-5)
    ignored = target == -100
    assert bool((logp[ignored] == 0).all() and (ent[ignored] == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match_the_plain_path_in_their_dtype(dtype):
    # The GEMM runs in the inputs' dtype, as a model's lm_head does: the op equals log_softmax over the float32
    # upcast of those logits (to float32 rounding), and the float64 reference to the dtype's resolution.
    hidden, weight, target, bias = make(dtype=dtype)
    logp, ent = linear_logprob_entropy(hidden, weight, target, bias, chunk_size=50)
    z = torch.addmm(bias, hidden, weight.t()).float()
    logsm = torch.log_softmax(z, 1)
    live = target != -100
    want = logsm[live].gather(1, target[live].unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(logp[live], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent[live], -(logsm.exp() * logsm).sum(1)[live], rtol=0, atol=1e-5)
    ref_logp, _ = linear_logprob_entropy_reference(hidden, weight, target, bias)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=0, atol=0.1)


@pytest.mark.parametrize("opts", [dict(), dict(softcap=2.0, logit_scale=1.5, temperature=1.3)])
@pytest.mark.parametrize("outputs", ["both", "logp", "entropy"])
def test_gradcheck_float64(opts, outputs):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (0.4 * torch.randn(13, 5, generator=g, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 13, (9,), generator=g)
    target[3] = -100

    def f(h, w, b):
        logp, ent = linear_logprob_entropy(h, w, target, b, chunk_size=4, **opts)  # 9 tokens: chunks 4, 4, 1
        return {"both": (logp, ent), "logp": logp, "entropy": ent}[outputs]

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_float32_gradients_match_the_reference():
    hidden, weight, target, bias = make(n=200, v=501)
    ins = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    g = torch.Generator().manual_seed(3)
    a, c = torch.randn(200, generator=g), torch.randn(200, generator=g)
    logp, ent = linear_logprob_entropy(ins[0], ins[1], target, ins[2], softcap=4.0, temperature=0.9, chunk_size=33)
    ((logp * a).sum() + (ent * c).sum()).backward()
    refs = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    rl, re = linear_logprob_entropy_reference(refs[0], refs[1], target, refs[2], softcap=4.0, temperature=0.9)
    ((rl * a.double()).sum() + (re * c.double()).sum()).backward()
    for got, want in zip(ins, refs):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5)
    assert bool((ins[0].grad[target == -100] == 0).all())  # ignored rows: no gradient


def test_large_prime_vocab_logp_never_above_zero():
    for v in (129_920, 65_537):
        hidden, weight, target, _ = make(n=12, h=16, v=v, bias=False)
        logp, ent = linear_logprob_entropy(10 * hidden, weight, target, chunk_size=5)
        assert bool((logp <= 0).all()) and bool((ent >= 0).all())
        want, _ = linear_logprob_entropy_reference(10 * hidden, weight, target)
        torch.testing.assert_close(logp.double(), want, rtol=0, atol=5e-5)


def test_non_contiguous_inputs_and_determinism():
    hidden, weight, target, bias = make(n=120, h=40, v=301)
    h_nc = hidden.t().contiguous().t()          # column-major
    wide = torch.zeros(weight.shape[0], 2 * weight.shape[1])
    wide[:, ::2] = weight
    w_nc = wide[:, ::2]  # strided rows
    assert not h_nc.is_contiguous() and not w_nc.is_contiguous()
    a = linear_logprob_entropy(h_nc, w_nc, target, bias, chunk_size=32)
    b = linear_logprob_entropy(hidden, weight, target, bias, chunk_size=32)
    c = linear_logprob_entropy(hidden, weight, target, bias, chunk_size=32)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(b, c))


def test_opcheck_and_compile_without_graph_breaks():
    hidden, weight, target, bias = make(n=20, h=8, v=31)
    args = (hidden.requires_grad_(), weight.requires_grad_(), target, bias.requires_grad_(), 1.0, 2.0, 1.0, -100, 6)
    torch.library.opcheck(torch.ops.bandpo.linear_logprob_entropy.default, args)
    f = torch.compile(lambda h, w, b: linear_logprob_entropy(h, w, target, b, softcap=2.0, chunk_size=6),
                      fullgraph=True, backend="aot_eager")
    logp, ent = f(hidden, weight, bias)
    (logp.sum() + ent.sum()).backward()
    want = linear_logprob_entropy(hidden.detach(), weight.detach(), target, bias.detach(), softcap=2.0)
    torch.testing.assert_close(logp, want[0]) and torch.testing.assert_close(ent, want[1])
    assert hidden.grad is not None and weight.grad is not None and bias.grad is not None


@pytest.mark.parametrize("change,match", [
    (dict(hidden=torch.randn(4, 3, 2)), "hidden must be 2-D"),
    (dict(weight=torch.randn(10, 7)), "weight must be"),
    (dict(target=torch.zeros(5, dtype=torch.int64)), "target must be 1-D"),
    (dict(target=torch.zeros(4, dtype=torch.int32)), "target must be int64"),
    (dict(hidden=torch.zeros(4, 8, dtype=torch.int32)), "hidden must be float32"),
    (dict(weight=torch.randn(10, 8, dtype=torch.float64)), "weight must have hidden's dtype"),
    (dict(bias=torch.randn(9)), "bias must be"),
    (dict(target=torch.tensor([0, 1, 10, 2])), r"target\[2\] = 10 is outside \[0, 10\)"),
    (dict(target=torch.tensor([0, -1, 1, 2])), r"target\[1\] = -1"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(softcap=-1.0), "softcap must be"),
    (dict(logit_scale=math.inf), "logit_scale must be"),
    (dict(chunk_size=-3), "chunk_size must be"),
])
def test_bad_arguments_are_named(change, match):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), target=torch.tensor([0, 1, 9, -100]),
                bias=torch.randn(10))
    args.update(change)
    kw = {k: args.pop(k) for k in ("temperature", "softcap", "logit_scale", "chunk_size") if k in args}
    with pytest.raises(ValueError, match=match):
        linear_logprob_entropy(args["hidden"], args["weight"], args["target"], args["bias"], **kw)


def test_fused_linear_band_loss_equals_the_two_steps():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g) / 4
    target = torch.randint(0, 50, (3, 7), generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.2
    with torch.no_grad():
        old = linear_logprob_entropy(hidden.reshape(-1, 16), weight, target.reshape(-1))[0].view(3, 7)
        old = old + 0.1 * torch.randn(3, 7, generator=g)
        old = old.clamp(max=0)
    adv = torch.randn(3, generator=g)
    out = bandpo.fused_linear_band_loss(hidden, weight, target, old, adv, mask, agg="seq-mean-token-mean")
    out.loss.backward()
    h2 = hidden.detach().clone().requires_grad_()
    logp, ent = linear_logprob_entropy(h2.reshape(-1, 16), weight, target.reshape(-1))
    want = bandpo.band_loss(logp.view(3, 7), old, adv, mask, agg="seq-mean-token-mean")
    want.loss.backward()
    torch.testing.assert_close(out.loss, want.loss)
    torch.testing.assert_close(hidden.grad, h2.grad)
    m = mask.float()
    torch.testing.assert_close(out.metrics["entropy"], (ent.view(3, 7) * m).sum() / m.sum())


def test_docstring_example_runs():
    results = doctest.testmod(lm_head, verbose=False)
    assert results.attempted >= 3 and results.failed == 0


def test_matches_trl_chunked_logprob():
    # TRL's chunked path (trl.kernels.chunked_logprob, TRL 1.16: Triton on CUDA, torch ops elsewhere): same
    # transform order (scale, softcap, temperature), same outputs. Skipped where TRL is not installed.
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")
    hidden, weight, target, bias = make(n=64, h=32, v=503)
    target = target.clamp(min=0)  # TRL has no ignore_index
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, weight, target, bias = (t.to(device) for t in (hidden, weight, target, bias))
    # (hidden, weight, bias, targets, temperature, vocab chunk, softcap, logit_scale): 503 = 3 x 128 + 119
    theirs = chunked.ChunkedLogProbFunction.apply(hidden, weight, bias, target, 0.8, 128, 5.0, 1.2)
    ours = linear_logprob_entropy(hidden, weight, target, bias, temperature=0.8, softcap=5.0, logit_scale=1.2)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=2e-5)


@pytest.mark.parametrize("opts", OPTIONS)
def test_kernel_path_equals_the_torch_path(opts, monkeypatch):
    # On the CPU the chunk statistics and gradient run in bandpo's kernels (logit_chunk_stats / _grad_); other
    # devices run the same math as torch operations. Both against each other, values and gradients.
    hidden, weight, target, bias = make(n=150, h=32, v=777)
    g = torch.Generator().manual_seed(9)
    a, c = torch.randn(150, generator=g), torch.randn(150, generator=g)
    results = []
    for kernels in (True, False):
        monkeypatch.setattr(lm_head, "_uses_kernels", lambda h, k=kernels: k)
        ins = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        logp, ent = linear_logprob_entropy(ins[0], ins[1], target, ins[2], chunk_size=40, **opts)
        ((logp * a).sum() + (ent * c).sum()).backward()
        results.append([logp, ent] + [t.grad for t in ins])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)  # gradients here reach 7; both within 7e-6 of float64


def test_chunk_ops_opcheck_and_errors():
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(5, 40, generator=g)
    target = torch.tensor([0, 39, -100, 7, 3])
    torch.library.opcheck(torch.ops.bandpo.logit_chunk_stats.default, (raw, target),
                          dict(ignore_index=-100, logit_scale=1.0, softcap=3.0, temperature=0.9))
    torch.library.opcheck(torch.ops.bandpo.logit_chunk_grad_.default,
                          (raw.clone(), target, torch.randn(5, generator=g), None),
                          dict(ignore_index=-100, logit_scale=1.0, softcap=0.0, temperature=1.0))
    with pytest.raises(ValueError, match=r"target\[1\] = 40 is outside \[0, 40\)"):
        torch.ops.bandpo.logit_chunk_stats(raw, torch.tensor([0, 40, 1, 2, 3]))
    with pytest.raises(TypeError, match="raw must be float32"):
        torch.ops.bandpo.logit_chunk_stats(raw.double(), target)
    with pytest.raises(ValueError, match="target must be"):
        torch.ops.bandpo.logit_chunk_stats(raw, target[:3])
    with pytest.raises(ValueError, match="temperature must be"):
        torch.ops.bandpo.logit_chunk_stats(raw, target, temperature=-1.0)
    with pytest.raises(ValueError, match="columns must be contiguous"):
        torch.ops.bandpo.logit_chunk_grad_(raw.t().contiguous().t(), target, None, None)
    with pytest.raises(ValueError, match="grad_logp must be"):
        torch.ops.bandpo.logit_chunk_grad_(raw.clone(), target, torch.randn(4), None)
