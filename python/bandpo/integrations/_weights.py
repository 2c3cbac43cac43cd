"""Per-token loss weights (rollout / sampler importance-sampling corrections) in terms of band_loss's mask."""

from __future__ import annotations

import torch


def weighted_mask(
    mask: torch.Tensor, weights: torch.Tensor, agg: str, dtype: torch.dtype, name: str
) -> tuple[torch.Tensor, str]:
    """Mask weights and aggregation with which ``band_loss`` weights each token's loss by ``weights`` while
    the denominators stay the counts of ``mask`` (what verl and TRL do with their correction weights).

    The caller passes an explicit ``normalizer`` (a count of ``mask``, not of the weights) for every agg.
    seq-mean-token-mean divides each row by its own token count, so that division moves into the weights
    and the rows are then summed as tokens: the returned agg is "token-mean" with the same normalizer.

    Args:
        mask: [B, T] bool or 0/1 mask of the tokens in the loss.
        weights: per-token weights broadcastable to mask ([B, T] or [B, 1]); no gradient flows into them.
        agg: the aggregation the unweighted loss would use.
        dtype: the dtype of logp (band_loss takes float masks in logp's dtype).
        name: the caller's argument name, for errors.
    """
    try:
        w = torch.broadcast_to(weights.detach(), mask.shape)
    except RuntimeError:
        raise ValueError(
            f"{name}: shape {tuple(weights.shape)} does not broadcast to the mask's {tuple(mask.shape)}"
        ) from None
    m = mask.to(dtype)
    w = m * w.to(dtype)
    if agg == "seq-mean-token-mean":
        row_tokens = m.sum(-1, keepdim=True)
        w = torch.where(row_tokens > 0, w / torch.where(row_tokens > 0, row_tokens, 1), 0)
        return w, "token-mean"
    return w, agg


def weighted_band_loss(band, tensors: tuple, mask: torch.Tensor, weights, normalizer, name: str):
    """``torch.ops.bandpo.band_loss(*tensors, mask, ...)`` with ``band``'s options, each token's loss times
    ``weights`` (None: unweighted) and the denominators the counts of ``mask`` (see weighted_mask).

    Args:
        band: the BandConfig, its ``agg`` the unweighted loss's.
        tensors: (logp, old_logp, advantages), as band_loss takes them.
        mask, weights, name: as weighted_mask takes them.
        normalizer: band_loss's normalizer (explicit when weights are given).
    Returns band_loss's (loss, metrics); the metrics are weighted too.
    """
    agg = band.agg
    if weights is not None:
        mask, agg = weighted_mask(mask, weights, agg, tensors[0].dtype, name)
    return torch.ops.bandpo.band_loss(*tensors, mask, normalizer=normalizer, **band.replace(agg=agg).loss_kwargs())
