"""The synthetic task: sort a short list of digits, with a verifiable reward and imperfect demonstrations.

A prompt is ``BOS d_1 .. d_K SEP`` (K digits, K in [min_len, max_len]); the answer is the digits in
ascending order followed by ``EOS``. The reward is 1 for exactly that answer, else 0.

The supervised warm start sees demonstrations that are right only some of the time; the rest are the
mistakes a weak solver makes (the prompt copied unsorted, or sorted with one adjacent pair swapped). The
warm-started policy therefore puts real but small probability on the right token at many positions — the
low-probability tail that PPO's fixed clip keeps from growing — and exact answers are rare at first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_DIGITS = 10
BOS, SEP, EOS, PAD = 10, 11, 12, 13
VOCAB_SIZE = 14


@dataclass(frozen=True)
class SortTask:
    min_len: int = 3
    max_len: int = 6
    demo_correct: float = 0.1  # fraction of demonstrations that are right

    @property
    def prompt_len(self) -> int:
        return self.max_len + 2  # BOS, digits, SEP (right-aligned: shorter prompts are left-padded)

    @property
    def response_len(self) -> int:
        return self.max_len + 1  # digits, EOS

    def sample_prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, prompt_len] int64 prompts, left-padded with PAD so that every SEP sits in the last column."""
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=generator)
        digits = torch.randint(0, NUM_DIGITS, (n, self.max_len), generator=generator)
        prompts = torch.full((n, self.prompt_len), PAD, dtype=torch.long)
        for i in range(n):
            k = int(lengths[i])
            prompts[i, self.prompt_len - k - 2] = BOS
            prompts[i, self.prompt_len - k - 1:-1] = digits[i, :k]
        prompts[:, -1] = SEP
        return prompts

    @staticmethod
    def prompt_digits(prompt: torch.Tensor) -> list[int]:
        return [int(t) for t in prompt.tolist() if t < NUM_DIGITS]

    def answer(self, prompt: torch.Tensor) -> list[int]:
        return sorted(self.prompt_digits(prompt)) + [EOS]

    def demonstration(self, prompt: torch.Tensor, generator: torch.Generator) -> list[int]:
        """A demonstration for the warm start: right with probability demo_correct, else a typical mistake."""
        digits = self.prompt_digits(prompt)
        u = float(torch.rand((), generator=generator))
        if u < self.demo_correct:
            return sorted(digits) + [EOS]
        if u < self.demo_correct + (1 - self.demo_correct) / 2:
            return digits + [EOS]  # copied, unsorted
        out = sorted(digits)
        j = int(torch.randint(0, len(out) - 1, (), generator=generator))
        out[j], out[j + 1] = out[j + 1], out[j]  # one adjacent swap (a no-op when the two are equal)
        return out + [EOS]

    def rewards(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """[n] float rewards: 1.0 where the response up to and including its first EOS is the answer."""
        out = torch.zeros(len(prompts))
        for i in range(len(prompts)):
            want = self.answer(prompts[i])
            got = responses[i, :len(want)].tolist()
            out[i] = float(got == want)
        return out
