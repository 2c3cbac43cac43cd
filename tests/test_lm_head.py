"""bandpo.linear_logprob_entropy (python/bandpo/lm_head/): log-probs and entropy from hidden states in chunks,
held to the float64 full-logits reference, to the plain path in the inputs' own dtype, and to gradcheck."""

import doctest
import math

import pytest
import torch

import bandpo
from bandpo.lm_head import LogitOptions, chunks, fused, op, torch_math
from bandpo.lm_head.checks import RowGrads
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
    h_nc = hidden.t().contiguous().t()  # column-major
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
    args = (hidden.requires_grad_(), weight.requires_grad_(), target, bias.requires_grad_())
    kwargs = {"ignore_index": -100, "logit_scale": 1.0, "softcap": 2.0, "temperature": 1.0, "chunk_size": 6}
    torch.library.opcheck(torch.ops.bandpo.linear_logprob_entropy.default, args, kwargs)
    f = torch.compile(
        lambda h, w, b: linear_logprob_entropy(h, w, target, b, softcap=2.0, chunk_size=6),
        fullgraph=True,
        backend="aot_eager",
    )
    logp, ent = f(hidden, weight, bias)
    (logp.sum() + ent.sum()).backward()
    want = linear_logprob_entropy(hidden.detach(), weight.detach(), target, bias.detach(), softcap=2.0)
    torch.testing.assert_close(logp, want[0]) and torch.testing.assert_close(ent, want[1])
    assert hidden.grad is not None and weight.grad is not None and bias.grad is not None


@pytest.mark.parametrize(
    "change,match",
    [
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
        (dict(chunk_size=1 << 64), "chunk_size must fit in int64"),
        (dict(ignore_index=-(1 << 70)), "ignore_index must fit in int64"),
    ],
)
def test_bad_arguments_are_named(change, match):
    args = dict(
        hidden=torch.randn(4, 8), weight=torch.randn(10, 8), target=torch.tensor([0, 1, 9, -100]), bias=torch.randn(10)
    )
    args.update(change)
    kw = {k: args.pop(k) for k in ("temperature", "softcap", "logit_scale", "chunk_size", "ignore_index") if k in args}
    with pytest.raises(ValueError, match=match):
        linear_logprob_entropy(args["hidden"], args["weight"], args["target"], args["bias"], **kw)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_row_with_nan_or_inf_logits_gives_nan_not_zero(kernels, bad, monkeypatch):
    # A diverged model (NaN or inf in the hidden states) must show as NaN, as log_softmax shows it: the clamps that
    # keep logp <= 0 and entropy >= 0 once turned the row's NaN into 0, a plausible log-prob. Other rows unchanged.
    monkeypatch.setattr(chunks, "uses_kernels", lambda h, k=kernels: k)
    hidden, weight, target, bias = make(n=40, h=16, v=101)
    target[5] = 3
    broken = hidden.clone()
    broken[5, 2] = bad
    logp, ent = linear_logprob_entropy(broken, weight, target, bias)
    want = linear_logprob_entropy(hidden, weight, target, bias)
    assert math.isnan(logp[5]) and math.isnan(ent[5])
    rest = torch.arange(40) != 5
    torch.testing.assert_close(logp[rest], want[0][rest], rtol=0, atol=0)
    torch.testing.assert_close(ent[rest], want[1][rest], rtol=0, atol=0)
    ref = linear_logprob_entropy_reference(broken, weight, target, bias)
    assert math.isnan(ref[0][5]) and math.isnan(ref[1][5])
    # one bad logit (through the bias, off the target) spoils every row: each has that vocabulary entry
    bad_bias = bias.clone()
    bad_bias[7] = bad
    logp, ent = linear_logprob_entropy(hidden, weight, target.clamp(min=8), bad_bias)
    assert bool(logp.isnan().all()) and bool(ent.isnan().all())
    # and the fused loss refuses it on the CPU, naming the log-probs
    old, adv = torch.full((40,), -3.0), torch.randn(40)
    with pytest.raises(ValueError, match=r"logp\[5\] is NaN"):
        bandpo.fused_linear_band_loss(broken.requires_grad_(), weight, target, old, adv, target != -100, bias=bias)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_masked_to_minus_inf_by_the_bias(kernels, dtype, monkeypatch):
    # Vocabulary entries masked by a bias of -inf have probability 0: they add nothing to the entropy (p log p -> 0)
    # and get no gradient, where 0 * -inf made the entropy and every gradient of the row NaN.
    if kernels and dtype == torch.float64:
        pytest.skip("float64 runs the torch path only")
    monkeypatch.setattr(chunks, "uses_kernels", lambda h, k=kernels: k)
    hidden, weight, target, bias = make(n=60, h=16, v=101, dtype=dtype)
    bias[::3] = -math.inf
    target = torch.where(target % 3 == 0, target + 1, target).clamp(max=100)
    g = torch.Generator().manual_seed(5)
    a, c = torch.randn(60, generator=g, dtype=dtype), torch.randn(60, generator=g, dtype=dtype)
    grads = []
    for fn in (linear_logprob_entropy, linear_logprob_entropy_reference):
        ins = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        logp, ent = fn(ins[0], ins[1], target, ins[2], temperature=0.9)
        ((logp.to(dtype) * a).sum() + (ent.to(dtype) * c).sum()).backward()
        grads.append([logp.detach().double(), ent.detach().double(), ins[0].grad, ins[1].grad])
    assert all(bool(x.isfinite().all()) for x in grads[0])
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for x, y in zip(*grads):
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol)


def test_meta_tensors_and_arguments_that_are_not_tensors():
    logp, ent = linear_logprob_entropy(
        torch.empty(5, 8, device="meta"),
        torch.empty(11, 8, device="meta"),
        torch.empty(5, dtype=torch.int64, device="meta"),
    )
    assert logp.shape == ent.shape == (5,) and logp.device.type == "meta"
    h, w, t = torch.randn(5, 8), torch.randn(11, 8), torch.zeros(5, dtype=torch.int64)
    for args, name in (
        ([[1.0], w, t], "hidden"),
        ([h, w.numpy(), t], "weight"),
        ([h, w, [0] * 5], "target"),
        ([h, w, t, [0.0] * 11], "bias"),
    ):
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor"):
            linear_logprob_entropy(*args)
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor"):
            bandpo.fused_linear_band_loss(
                *args[:3], torch.zeros(5), torch.zeros(5), bias=args[3] if len(args) > 3 else None
            )


def _fused_case(seed=4, b=3, t=7, h=16, v=50, float_mask=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g)
    weight = torch.randn(v, h, generator=g) / 4
    bias = 0.1 * torch.randn(v, generator=g)
    target = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.2
    if float_mask:
        mask = mask * torch.rand(b, t, generator=g)
    with torch.no_grad():
        old = linear_logprob_entropy(hidden.reshape(-1, h), weight, target.reshape(-1), bias)[0].view(b, t)
        # up to e^(+-0.9) away: some tokens clipped by the band, a few by the dual clip at 2
        old = (old + 0.3 * torch.randn(b, t, generator=g)).clamp(max=0)
    return hidden, weight, bias, target, mask, old, torch.randn(b, generator=g), old - 0.2


def _two_steps(hidden, weight, bias, target, mask, old, adv, ref, entropy_coef=0.0, **kw):
    """The same loss through the op and band_loss, the entropy bonus aggregated in plain torch (verl's agg_loss)."""
    b, t, h = hidden.shape
    logp, ent = linear_logprob_entropy(hidden.reshape(-1, h), weight, target.reshape(-1), bias)
    out = bandpo.band_loss(logp.view(b, t), old, adv, mask, ref_logp=ref, **kw)
    m, ent = mask.float(), ent.view(b, t)
    agg = kw.get("agg", "token-mean")
    if kw.get("normalizer"):
        bonus = (ent * m).sum() / kw["normalizer"]
    elif agg == "seq-mean-token-mean":
        bonus = ((ent * m).sum(1) / m.sum(1)).sum() / b
    else:
        bonus = (ent * m).sum() / {"token-mean": m.sum(), "seq-mean-token-sum": b, "seq-mean-token-sum-norm": b * t}[
            agg
        ]
    return out.loss - entropy_coef * bonus, ent


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(dual_clip=2.0, kl_coef=0.1),
        dict(normalizer=5.0),
        dict(entropy_coef=0.03),
        dict(divergence="clip", float_mask=True),
        dict(torch_path=True, entropy_coef=0.01),
    ],
)
def test_fused_linear_band_loss_equals_the_two_steps(agg, kw, monkeypatch):
    # Gradients formed in the forward (three GEMMs) against autograd through the op and band_loss, for every
    # aggregation, the KL penalty, dual clip, a normalizer, weight masks and the entropy bonus; chunks of 5 tokens
    # across sequence boundaries; the CPU kernels and the torch path (other devices).
    kw = dict(kw)
    if kw.pop("torch_path", False):
        monkeypatch.setattr(chunks, "uses_kernels", lambda x: False)
    hidden, weight, bias, target, mask, old, adv, ref = _fused_case(float_mask=kw.pop("float_mask", False))
    ref = ref if kw.get("kl_coef") else None
    ins = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    out = bandpo.fused_linear_band_loss(
        ins[0], ins[1], target, old, adv, mask, bias=ins[2], ref_logp=ref, chunk_size=5, agg=agg, **kw
    )
    out.loss.backward()
    want_ins = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    want, ent = _two_steps(*want_ins, target, mask, old, adv, ref, agg=agg, **kw)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    for x, y in zip(ins, want_ins):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    m = mask.float()
    torch.testing.assert_close(out.metrics["entropy"], (ent * m).sum() / m.sum())


def test_fused_linear_band_loss_float64_and_frozen_weight():
    # float64 computes in float64: the gradients formed in the forward equal autograd through the op (itself
    # gradchecked above) to 1e-12; a frozen head forms d hidden only (weight's and bias's GEMMs skipped)
    hidden, weight, bias, target, mask, old, adv, _ = _fused_case(b=2, t=4, h=5, v=9)
    old, adv = old.double(), adv.double()
    for frozen in (False, True):
        ins = [x.double().requires_grad_(i == 0 or not frozen) for i, x in enumerate((hidden, weight, bias))]
        out = bandpo.fused_linear_band_loss(
            ins[0], ins[1], target, old, adv, mask, bias=ins[2], chunk_size=3, entropy_coef=0.1
        )
        out.loss.backward()
        want_ins = [x.double().requires_grad_() for x in (hidden, weight, bias)]
        want, _ = _two_steps(*want_ins, target, mask, old, adv, None, entropy_coef=0.1)
        want.backward()
        torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
        for x, y in zip(ins, want_ins):
            if x.requires_grad:
                torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)
            else:
                assert x.grad is None


def test_fused_linear_band_loss_without_grad_and_errors():
    hidden, weight, bias, target, mask, old, adv, _ = _fused_case()
    with torch.no_grad():
        a = bandpo.fused_linear_band_loss(hidden.requires_grad_(), weight, target, old, adv, mask, bias=bias)
    b = bandpo.fused_linear_band_loss(hidden, weight, target, old, adv, mask, bias=bias)
    torch.testing.assert_close(a.loss, b.loss.detach())
    assert a.metrics.keys() == b.metrics.keys()
    b.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        b.loss.backward()
    with pytest.raises(ValueError, match="entropy_coef"):
        bandpo.fused_linear_band_loss(hidden, weight, target, old, adv, mask, entropy_coef=math.nan)
    with pytest.raises(ValueError, match=r"target\[3\]"):
        bad = target.clone()
        bad.view(-1)[3] = 50
        bandpo.fused_linear_band_loss(hidden, weight, bad, old, adv, mask)
    with pytest.raises(ValueError, match="old_logp"):
        bandpo.fused_linear_band_loss(hidden, weight, target, old[:, :3], adv, mask)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(adv=torch.zeros(2)), "advantages must have the shape"),
        (dict(mask=torch.ones(3, 4, dtype=torch.bool)), "mask must have the shape"),
        (dict(ref_logp=torch.zeros(3, 6), kl_coef=0.1), "ref_logp must have the shape"),
        (dict(old_nan=True), r"old_logp\[8\] is NaN"),
        (dict(adv_inf=True), r"advantages\[1\] = inf"),
        (dict(delta=-1.0), "delta must be in"),
        (dict(normalizer=0.0), "normalizer"),
    ],
)
def test_fused_loss_refuses_bad_loss_inputs_before_the_head_runs(change, match, monkeypatch):
    # The loss's inputs are checked (by the op's own checks, naming the argument) before any of the head's GEMMs:
    # the chunk loop is never entered.
    hidden, weight, bias, target, mask, old, adv, _ = _fused_case()

    def no_head(*args, **kwargs):
        raise AssertionError("the head ran before the loss inputs were checked")

    monkeypatch.setattr(fused, "logit_chunks", no_head)
    monkeypatch.setattr(fused, "linear_logprob_entropy", no_head)
    kw = dict(change)
    adv = kw.pop("adv", adv)
    mask = kw.pop("mask", mask)
    if kw.pop("old_nan", False):
        old = old.clone()
        old.view(-1)[8] = math.nan
        mask = torch.ones_like(mask)
    if kw.pop("adv_inf", False):
        adv = adv.clone()
        adv[1] = math.inf
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=match):
            bandpo.fused_linear_band_loss(hidden.requires_grad_(), weight, target, old, adv, mask, bias=bias, **kw)


def test_docstring_example_runs():
    results = doctest.testmod(op, verbose=False)
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
        monkeypatch.setattr(chunks, "uses_kernels", lambda h, k=kernels: k)
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
    torch.library.opcheck(
        torch.ops.bandpo.logit_chunk_stats.default,
        (raw, target),
        dict(ignore_index=-100, logit_scale=1.0, softcap=3.0, temperature=0.9),
    )
    torch.library.opcheck(
        torch.ops.bandpo.logit_chunk_grad_.default,
        (raw.clone(), target, torch.randn(5, generator=g), None),
        dict(ignore_index=-100, logit_scale=1.0, softcap=0.0, temperature=1.0),
    )
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
    lp, ent = torch.ops.bandpo.logit_chunk_stats(raw, target)
    with pytest.raises(ValueError, match="logp and entropy come together"):
        torch.ops.bandpo.logit_chunk_grad_(raw.clone(), target, None, None, logp=lp)
    with pytest.raises(ValueError, match="entropy must be"):
        torch.ops.bandpo.logit_chunk_grad_(raw.clone(), target, None, None, logp=lp, entropy=ent[:2])


@pytest.mark.parametrize("opts", OPTIONS)
def test_chunk_grad_from_outputs_equals_from_sums(opts):
    # Given the chunk's logp and entropy, logit_chunk_grad_ takes each row's log-sum-exp and mean logit from them
    # (one pass) instead of summing the row again (three): the same gradient to float rounding, for both paths.
    # Logits up to about 25 in size, the ignored row's and all.
    g = torch.Generator().manual_seed(5)
    raw = 8 * torch.randn(9, 3001, generator=g)
    target = torch.randint(0, 3001, (9,), generator=g)
    target[4] = -100
    gl, gh = torch.randn(9, generator=g), torch.randn(9, generator=g)
    kw = dict(
        ignore_index=-100,
        logit_scale=opts.get("logit_scale", 1.0),
        softcap=opts.get("softcap", 0.0),
        temperature=opts.get("temperature", 1.0),
    )
    lp, ent = torch.ops.bandpo.logit_chunk_stats(raw, target, **kw)
    from_sums, from_outputs = raw.clone(), raw.clone()
    torch.ops.bandpo.logit_chunk_grad_(from_sums, target, gl, gh, **kw)
    torch.ops.bandpo.logit_chunk_grad_(from_outputs, target, gl, gh, logp=lp, entropy=ent, **kw)
    torch.library.opcheck(
        torch.ops.bandpo.logit_chunk_grad_.default, (raw.clone(), target, gl, gh), dict(kw, logp=lp, entropy=ent)
    )
    scale = from_sums.abs().max()
    torch.testing.assert_close(from_outputs, from_sums, rtol=0, atol=2e-6 * float(scale))
    assert not from_outputs[4].any()
    options = LogitOptions(**kw)
    # on float64 raw: the torch path, both ways, against the kernel
    for outputs in ((None, None), (lp.double(), ent.double())):
        got = torch_math.chunk_logit_grad_(raw.double(), target, RowGrads(gl, gh, *outputs), options)
        torch.testing.assert_close(got.float(), from_sums, rtol=0, atol=2e-6 * float(scale))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("opts", OPTIONS)
def test_cuda_matches_the_reference_and_the_cpu(opts):
    # CUDA runs the chunk steps as torch operations (lm_head.chunks.uses_kernels): values and gradients against the
    # float64 reference, and against the CPU's kernel path on the same inputs.
    hidden, weight, target, bias = make(n=300, v=1009)
    g = torch.Generator().manual_seed(3)
    a, c = torch.randn(300, generator=g), torch.randn(300, generator=g)
    results = []
    for device in ("cpu", "cuda"):
        ins = [t.detach().to(device).requires_grad_() for t in (hidden, weight, bias)]
        logp, ent = linear_logprob_entropy(ins[0], ins[1], target.to(device), ins[2], chunk_size=64, **opts)
        ((logp * a.to(device)).sum() + (ent * c.to(device)).sum()).backward()
        results.append([x.detach().cpu() for x in (logp, ent)] + [t.grad.cpu() for t in ins])
    want_logp, want_ent = linear_logprob_entropy_reference(hidden, weight, target, bias, **opts)
    torch.testing.assert_close(results[1][0].double(), want_logp, rtol=0, atol=2e-5)
    torch.testing.assert_close(results[1][1].double(), want_ent, rtol=0, atol=2e-5)
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=2e-5)


@cuda
def test_cuda_half_fused_loss_and_bad_targets():
    # bf16 on CUDA: the op against log_softmax over the bf16 GEMM's float32 upcast; the fused loss (gradients in
    # the forward) against the two steps; an out-of-range target gives NaN there (no host sync), not a raise.
    hidden, weight, target, bias = (t.cuda() for t in make(dtype=torch.bfloat16))
    logp, ent = linear_logprob_entropy(hidden, weight, target, bias, chunk_size=50)
    logsm = torch.log_softmax(torch.addmm(bias, hidden, weight.t()).float(), 1)
    live = target != -100
    torch.testing.assert_close(
        logp[live], logsm[live].gather(1, target[live].unsqueeze(1)).squeeze(1), rtol=0, atol=1e-5
    )
    bad = target.clone()
    bad[5] = 5000
    logp, ent = linear_logprob_entropy(hidden, weight, bad, bias)
    assert bool(logp[5].isnan()) and bool(ent[5].isnan()) and not bool(logp[6:].isnan().any())
    case = [t.cuda() if isinstance(t, torch.Tensor) else t for t in _fused_case()]
    hidden, weight, bias, target, mask, old, adv, ref = case
    ins = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    out = bandpo.fused_linear_band_loss(
        ins[0], ins[1], target, old, adv, mask, bias=ins[2], ref_logp=ref, kl_coef=0.1, chunk_size=5, entropy_coef=0.02
    )
    out.loss.backward()
    want_ins = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    want, _ = _two_steps(*want_ins, target, mask, old, adv, ref, entropy_coef=0.02, kl_coef=0.1)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    for x, y in zip(ins, want_ins):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", OPTIONS[:3])
def test_cuda_kernels_equal_the_torch_path(dtype, opts, monkeypatch):
    # The CUDA chunk kernels (csrc/core/cuda/lm_head.cu, reading bf16 logits as the GEMM gives them) against the
    # torch operations on the same device: values and gradients through both outputs, op and fused loss.
    hidden, weight, target, bias = (t.cuda() for t in make(n=200, h=32, v=1001, dtype=dtype))
    g = torch.Generator().manual_seed(7)
    a, c = torch.randn(200, generator=g).cuda(), torch.randn(200, generator=g).cuda()
    results = []
    for kernels in (True, False):
        monkeypatch.setattr(chunks, "uses_kernels", lambda x, k=kernels: k and x.dtype != torch.float64)
        ins = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        logp, ent = linear_logprob_entropy(ins[0], ins[1], target, ins[2], chunk_size=48, **opts)
        ((logp * a).sum() + (ent * c).sum()).backward()
        results.append([logp, ent] + [t.grad.float() for t in ins])
    tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, **tol)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_on_nan_inf_and_masked_logits(dtype):
    # The device's one-pass fold (logit_sums_add per 16-byte load) on rows the host test of the fold covers
    # (tests/cpp/test_core.cpp): a NaN or +inf logit gives NaN for that row only; logits of -inf from the bias
    # (masked entries, whole loads of them) add nothing and get no gradient. float32 against the CPU's kernels.
    hidden, weight, target, bias = make(n=64, h=16, v=1001)
    masked = torch.zeros(1001, dtype=torch.bool)
    masked[::3] = True
    masked[500:540] = True  # whole 16-byte loads masked
    bias[masked] = -math.inf
    target = torch.where((target >= 0) & masked[target.clamp(min=0)], torch.full_like(target, 541), target)
    broken = hidden.clone()
    broken[5, 3], broken[9, 0] = math.nan, math.inf
    bad_rows = torch.zeros(64, dtype=torch.bool)
    bad_rows[[5, 9]] = True
    results = []
    for device in ("cpu", "cuda"):
        cast = dtype if device == "cuda" else torch.float32
        w, b = weight.to(device, cast), bias.to(device, cast)
        logp, ent = linear_logprob_entropy(broken.to(device, cast), w, target.to(device), b, chunk_size=24)
        ins = [t.to(device, cast).detach().requires_grad_() for t in (hidden, weight, bias)]
        clean = linear_logprob_entropy(ins[0], ins[1], target.to(device), ins[2], chunk_size=24)
        (clean[0].sum() + clean[1].sum()).backward()
        results.append([logp.float().cpu(), ent.float().cpu(), ins[1].grad.float().cpu()])
    for logp, ent, grad_weight in results:
        assert bool(logp.isnan().eq(bad_rows).all()) and bool(ent.isnan().eq(bad_rows).all())
        assert bool(grad_weight.isfinite().all()) and bool((grad_weight[masked] == 0).all())
    if dtype == torch.float32:
        for x, y in zip(*results):
            good = ~x.isnan()
            torch.testing.assert_close(y[good], x[good], rtol=1e-5, atol=2e-5)


@cuda
def test_cuda_chunk_ops_against_the_cpu():
    # the ops themselves: bf16 raw on CUDA against its float32 upcast on the CPU, rows off 16-byte boundaries, an
    # odd vocabulary, ignored and out-of-range targets (NaN there: no host sync), opcheck on CUDA
    g = torch.Generator().manual_seed(8)
    full = (4 * torch.randn(6, 1004, generator=g)).bfloat16()
    raw = full[:, 3:]  # rows start 6 bytes past a 16-byte boundary
    target = torch.tensor([0, 1000, -100, 5, 999, 17])
    lp, ent = torch.ops.bandpo.logit_chunk_stats(raw.cuda(), target.cuda(), softcap=5.0)
    want_lp, want_ent = torch.ops.bandpo.logit_chunk_stats(raw.float().contiguous(), target, softcap=5.0)
    torch.testing.assert_close(lp.cpu(), want_lp, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent.cpu(), want_ent, rtol=0, atol=2e-5)
    gl, gh = torch.randn(6, generator=g), torch.randn(6, generator=g)
    got = raw.cuda()
    torch.ops.bandpo.logit_chunk_grad_(got, target.cuda(), gl.cuda(), gh.cuda(), softcap=5.0, logp=lp, entropy=ent)
    want = raw.float().contiguous()
    torch.ops.bandpo.logit_chunk_grad_(want, target, gl, gh, softcap=5.0)
    torch.testing.assert_close(got.cpu().float(), want.bfloat16().float(), rtol=0, atol=1e-2)
    bad = torch.tensor([0, 1001, -100, 5, -3, 17]).cuda()
    lp, ent = torch.ops.bandpo.logit_chunk_stats(raw.cuda(), bad)
    assert lp[[1, 4]].isnan().all() and not lp[[0, 2, 3, 5]].isnan().any() and float(lp[2]) == 0.0
    torch.library.opcheck(
        torch.ops.bandpo.logit_chunk_stats.default,
        (raw.cuda().contiguous(), target.cuda()),
        dict(ignore_index=-100, logit_scale=1.0, softcap=0.0, temperature=1.0),
    )


def test_autocast_runs_the_head_in_its_dtype_forward_and_backward():
    # Under autocast the op is the op on inputs cast to autocast's dtype (as a plain lm_head would be), forward and
    # backward alike (the gradients reach the float32 leaves through the cast); so is the fused loss.
    hidden, weight, target, bias = make(n=120, h=32, v=301)
    g = torch.Generator().manual_seed(11)
    a, c = torch.randn(120, generator=g), torch.randn(120, generator=g)
    results = []
    for autocast in (True, False):
        ins = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            args = ins if autocast else [t.bfloat16() for t in ins]
            logp, ent = linear_logprob_entropy(args[0], args[1], target, args[2], chunk_size=50)
        ((logp * a).sum() + (ent * c).sum()).backward()
        results.append([logp, ent] + [t.grad for t in ins])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    hidden, weight, bias, target, mask, old, adv, _ = _fused_case()
    losses = []
    for autocast in (True, False):
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            x = h if autocast else h.bfloat16()
            w, b = (weight, bias) if autocast else (weight.bfloat16(), bias.bfloat16())
            out = bandpo.fused_linear_band_loss(x, w, target, old, adv, mask, bias=b, chunk_size=5)
        out.loss.backward()
        losses.append((out.loss, h.grad))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=0, atol=0)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=0, atol=0)
