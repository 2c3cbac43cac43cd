"""The synthetic tasks: verifiable rewards, imperfect demonstrations for the warm start, held-out prompts.

A prompt is ``BOS d_1 .. d_K SEP`` (K digits), left-padded with PAD so that every SEP sits in the last column;
a response is digits then ``EOS``. The reward is 1 for a right response (up to and including its first EOS),
else 0. About one digit set in ten (``held_out``) never appears in the warm start or in RL training: the
evaluation (pass@k) samples its prompts from those sets only.

- ``zigzag`` (the default): K distinct digits; right is *any* arrangement of exactly those digits in which
  every inner digit is a peak or a valley (no three in a row rise or fall), e.g. 1 5 2 7 3 for {1,2,3,5,7}.
  There are 2·E_K right answers (E_K the Euler zigzag number): 10 for K = 4, 32 for 5, 122 for 6. The
  demonstrations prefer two of them: most show one canonical answer or its mirror, a few a uniformly random
  right one, the rest typical mistakes. The warm-started policy therefore knows a few answers well and the
  others only faintly — the situation where keeping rare good continuations alive (pass@k, distinct
  answers) is what a clipping rule decides.
- ``sort``: any K digits (repeats allowed); the one right answer is the digits in ascending order. Warm start
  on demonstrations that are right only some of the time (the rest copy the list or swap one adjacent pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_DIGITS = 10
BOS, SEP, EOS, PAD = 10, 11, 12, 13
VOCAB_SIZE = 14


def is_held_out(digits: list[int]) -> bool:
    """Whether a digit set (multiset, any order) belongs to the held-out evaluation split (about 1 in 10)."""
    key = 0
    for d in sorted(digits):
        key = (key * 31 + d + 1) % 1_000_003
    return key % 10 == 3


def is_zigzag(seq: list[int]) -> bool:
    """Every inner element strictly above both neighbours or strictly below both."""
    return all((a < b and b > c) or (a > b and b < c) for a, b, c in zip(seq, seq[1:], seq[2:]))


@dataclass(frozen=True)
class Task:
    """Shared prompt layout, splits and rewards; subclasses define the digits, the right answers and the
    demonstrations."""

    min_len: int = 4
    max_len: int = 6
    demo_correct: float = 0.5  # fraction of warm-start demonstrations that are right

    name = "task"

    def __post_init__(self):
        if not 2 <= self.min_len <= self.max_len <= NUM_DIGITS:
            raise ValueError(
                f"min_len and max_len must satisfy 2 <= min_len <= max_len <= {NUM_DIGITS}; "
                f"got {self.min_len} and {self.max_len}"
            )
        if not 0.0 <= self.demo_correct <= 1.0:
            raise ValueError(f"demo_correct must be in [0, 1]; got {self.demo_correct}")

    @property
    def prompt_len(self) -> int:
        return self.max_len + 2  # BOS, digits, SEP

    @property
    def response_len(self) -> int:
        return self.max_len + 1  # digits, EOS

    def draw_digits(self, k: int, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def sample_prompts(self, n: int, generator: torch.Generator, split: str = "train") -> torch.Tensor:
        """[n, prompt_len] int64 prompts whose digit sets lie in `split` ("train" or "eval")."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval'; got {split!r}")
        prompts = torch.full((n, self.prompt_len), PAD, dtype=torch.long)
        for i in range(n):
            while True:
                k = int(torch.randint(self.min_len, self.max_len + 1, (), generator=generator))
                digits = self.draw_digits(k, generator)
                if is_held_out(digits) == (split == "eval"):
                    break
            prompts[i, self.prompt_len - k - 2] = BOS
            prompts[i, self.prompt_len - k - 1 : -1] = torch.tensor(digits)
        prompts[:, -1] = SEP
        return prompts

    @staticmethod
    def prompt_digits(prompt: torch.Tensor) -> list[int]:
        return [int(t) for t in prompt.tolist() if t < NUM_DIGITS]

    @staticmethod
    def answer_of(response: list[int]) -> tuple:
        """The response up to and including its first EOS (the whole row if it has none)."""
        return tuple(response[: response.index(EOS) + 1]) if EOS in response else tuple(response)

    def is_right(self, digits: list[int], answer: tuple) -> bool:
        raise NotImplementedError

    def demonstration(self, prompt: torch.Tensor, generator: torch.Generator) -> list[int]:
        raise NotImplementedError

    def correct(self, prompts: torch.Tensor, responses: torch.Tensor) -> list[bool]:
        """Whether each response (up to its first EOS) is a right answer to its prompt."""
        return [self.is_right(self.prompt_digits(p), self.answer_of(r.tolist())) for p, r in zip(prompts, responses)]

    def rewards(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """[n] float rewards: 1.0 for a right response, else 0.0."""
        return torch.tensor(self.correct(prompts, responses), dtype=torch.float32)


@dataclass(frozen=True)
class ZigzagTask(Task):
    demo_correct: float = 0.5

    name = "zigzag"

    # Shares of the demonstrations (fixed before any RL run was compared): of the right ones, 60% the canonical
    # answer, 20% its mirror, 20% uniform over all right answers; of the wrong ones, 40% the digits sorted,
    # 30% a uniformly random arrangement, 30% the canonical answer with one adjacent pair swapped (random and
    # swapped ones are right by chance now and then: the reward, not the label, decides).
    right_shares = (0.6, 0.2, 0.2)
    wrong_shares = (0.4, 0.3, 0.3)

    def draw_digits(self, k: int, generator: torch.Generator) -> list[int]:
        return torch.randperm(NUM_DIGITS, generator=generator)[:k].tolist()

    def is_right(self, digits: list[int], answer: tuple) -> bool:
        body = list(answer[:-1])
        return (
            len(answer) == len(digits) + 1 and answer[-1] == EOS and sorted(body) == sorted(digits) and is_zigzag(body)
        )

    @staticmethod
    def canonical(digits: list[int]) -> list[int]:
        """a1 a3 a2 a5 a4 ... of the sorted digits a1 < a2 < ...: up, down, up, ... (always right)."""
        s = sorted(digits)
        out = [s[0]]
        for j in range(1, len(s) - 1, 2):
            out += [s[j + 1], s[j]]
        if len(s) % 2 == 0:
            out.append(s[-1])
        return out

    def _choice(self, shares, generator) -> int:
        u = float(torch.rand((), generator=generator))
        for i, share in enumerate(shares):
            if u < share:
                return i
            u -= share
        return len(shares) - 1

    def demonstration(self, prompt: torch.Tensor, generator: torch.Generator) -> list[int]:
        digits = self.prompt_digits(prompt)
        canon = self.canonical(digits)
        if float(torch.rand((), generator=generator)) < self.demo_correct:
            kind = self._choice(self.right_shares, generator)
            if kind == 0:
                return canon + [EOS]
            if kind == 1:
                return canon[::-1] + [EOS]
            while True:  # uniform over the right answers: at least 2·E_6 / 6! = 17% of arrangements are right
                perm = [digits[i] for i in torch.randperm(len(digits), generator=generator).tolist()]
                if is_zigzag(perm):
                    return perm + [EOS]
        kind = self._choice(self.wrong_shares, generator)
        if kind == 0:
            return sorted(digits) + [EOS]
        if kind == 1:
            return [digits[i] for i in torch.randperm(len(digits), generator=generator).tolist()] + [EOS]
        j = int(torch.randint(0, len(canon) - 1, (), generator=generator))
        canon[j], canon[j + 1] = canon[j + 1], canon[j]
        return canon + [EOS]


@dataclass(frozen=True)
class SortTask(Task):
    min_len: int = 3
    demo_correct: float = 0.1

    name = "sort"

    def draw_digits(self, k: int, generator: torch.Generator) -> list[int]:
        return torch.randint(0, NUM_DIGITS, (k,), generator=generator).tolist()

    def answer(self, prompt: torch.Tensor) -> list[int]:
        return sorted(self.prompt_digits(prompt)) + [EOS]

    def is_right(self, digits: list[int], answer: tuple) -> bool:
        return list(answer) == sorted(digits) + [EOS]

    def demonstration(self, prompt: torch.Tensor, generator: torch.Generator) -> list[int]:
        """Right with probability demo_correct, else a typical mistake (copied, or one adjacent swap)."""
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


TASKS = {"zigzag": ZigzagTask, "sort": SortTask}
