"""A small causal transformer language model in plain PyTorch (pre-norm blocks, learned positions), with an
optional key/value cache for sampling one token at a time."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, kv: Optional[list] = None) -> torch.Tensor:
        """x [b, t, d]. With kv (a list, empty or [k, v] of the earlier positions), the new keys and values are
        appended to it and the t new positions attend to all of them; without, plain causal attention."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if kv is not None:
            if kv:
                k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)
            kv[:] = [k, v]
        # New positions see every cached one; among themselves (the first call, an empty cache) causally.
        causal = t > 1
        if causal and k.shape[2] != t:
            raise ValueError("a cached forward takes the prompt at once, then one token per call")
        att = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class CausalLM(nn.Module):
    """logits[b, t] predict token t + 1 from tokens 0..t."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor, cache: Optional[list] = None, return_hidden: bool = False) -> torch.Tensor:
        """tokens [b, t] -> logits [b, t, vocab]. cache: a list kept between calls (start with []) to feed the
        prompt first and then one token per call, each attending to everything before it. return_hidden: the
        final hidden states [b, t, d_model] instead, which ``self.head`` turns into the logits (a keyword of
        forward, not a method, so that it also goes through a DistributedDataParallel wrapper)."""
        if cache is not None and not cache:
            cache.extend([] for _ in self.blocks)
        start = 0 if not cache or not cache[0] else cache[0][0].shape[2]
        x = self.tok(tokens) + self.pos(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        hidden = self.norm(x)
        return hidden if return_hidden else self.head(hidden)
