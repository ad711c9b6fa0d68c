"""n-digit addition as an endless stream: every training example is fresh.

Token layout (n_digits = 8, answer most significant digit first):

    s 1 2 3 4 5 6 7 8 + 8 7 6 5 4 3 2 1 = 0 9 9 9 9 9 9 9 9 e
    ^ start            ^ plus            ^ equals            ^ end

    vocabulary: 0-9 are digits 0-9, then s=10, e=11, +=12, ==13 (14 tokens)
    29 tokens, 28 predicted: a7..a0 + b7..b0 = c8..c0 e

With `reverse_answer` the sum is written least significant digit first (c0..c8), which lets a causal
model produce each digit after the carry it depends on.

What is sent (`lab.bits`): `s + = e` are known from the layout and cost nothing; the 2n operand digits
and the n+1 sum digits are sent, the operands by the model (`loss_on=all`) or by their exact law
(`loss_on=answer`, `law_probs`).

Aleatoric floor, in bits per predicted position (operands uniform on [10^(n-1), 10^n - 1]):
a7 and b7 cost log2 9 (no leading zero), the other 14 operand digits log2 10 each, everything from
`+` on is determined by what came before (floor 0). For n = 8 that is 2 (log2 9 + 7 log2 10) = 52.85
bits per example; with `leading_zeros` (operands uniform on [0, 10^n - 1]) it is 16 log2 10 = 53.15.

`label_noise` eps replaces the whole answer, w.p. eps, by one of the other 10^(n+1) - 1 digit strings
of its length, drawn uniformly (fixed per example: once per stream position, once for the held-out
set). The answer then carries H(eps) + eps log2(10^(n+1) - 1) bits, split over its digits exactly as
`noisy_answer_floor` derives.

The rule, not only the typical case: a carry chain is a run of digit positions whose pair sums to 9
and which a carry passes through (`longest_chain`). Under uniform operands a chain of k digits has
chance ~10^-k, so 99% held-out exact match says little about long chains. The evaluation sets
`chain_0`..`chain_{n-1}` hold up to `n_chain` sums each whose longest chain is exactly k (every length
equally represented, built with the task's encoder, clean labels), scored as `val/chain_exact/<k>` and
their minimum `val/chain_exact_min`: the rule learned means every length right.

`chain_prob` q > 0 makes long chains common in the training stream (not in the held-out set, which
stays uniform): each pair below the leading one sums to 9 with probability q (b_i = 9 - a_i, else b_i
uniform), so a chain of k digits has chance ~q^k. Each such b digit then carries
H(q + (1-q)/10, (1-q)/10 x 9) bits instead of log2 10. `chain_prob_lead` q' does the same for the leading
pair where 9 - a is a leading digit (1+8..8+1): uniform, it sums to 9 w.p. 8/81, so without it a chain
that ends there (c_n = 1 through it) is ~q / 0.1 times rarer than the same chain one place lower.

The stream never yields a held-out or chain pair: colliding rows are redrawn, so the operands follow
that law restricted to the other pairs (`lab.tasks.operands.OperandLaw`). The floors above are for that
law, exactly: for n = 8 it moves them by about 1e-13 bit, for n = 2 with 2,000 of 8,100 pairs held out
the operands carry log2 6100 = 12.575 bits, not 12.984.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.errors import check
from lab.tasks.base import Score, TaskConfig, log2, register, rng_for
from lab.tasks.operands import OperandTask


@dataclass
class AdditionConfig(TaskConfig):
    name: str = "addition"
    """Which registered task (`python -m lab tasks` lists them)."""
    n_digits: int = 8
    """Digits per operand (1..18); the sum has n_digits + 1."""
    leading_zeros: bool = False
    """Operands on [0, 10^n - 1] instead of [10^(n-1), 10^n - 1]."""
    reverse_answer: bool = False
    """Write the sum least significant digit first."""
    n_heldout: int = 2000
    """Held-out sums (uniform operands, never in the stream): val/exact_match."""
    n_chain: int = 200
    """Sums per carry-chain length 0..n-1 for the rule's evaluation (val/chain_exact/<k>), never in the
    stream."""
    n_chain_confirm: int = 0
    """More sums per length, scored only near the stop (the lowest chain on the n_chain sums within 3 / n_chain
    of train.stop_at, and for val/rule held-out exact match at it) and pooled with them before the run stops
    on val/rule or val/chain_exact_min (never in the stream)."""
    chain_prob: float = 0.0
    """Training stream only: each pair below the leading one sums to 9 with this probability (0: uniform)."""
    chain_prob_lead: float = 0.0
    """Training stream only: the leading pair sums to 9 (1+8..8+1) with this probability where it can (0: uniform,
    8/81 without leading zeros), so that chains ending in it are as common as those below."""

    def validate(self) -> None:
        super().validate()
        n = self.n_digits
        check(1 <= n <= 18, "task.n_digits", f"{n} is not in 1..18")
        pairs = (10**n - (0 if self.leading_zeros else 10 ** (n - 1))) ** 2
        check(self.n_heldout >= 0, "task.n_heldout", f"{self.n_heldout} is negative")
        check(self.n_heldout <= min(pairs // 2, Addition.max_eval_rows), "task.n_heldout",
              f"{self.n_heldout} is more than half of the {pairs} operand pairs or than "
              f"{Addition.max_eval_rows:,} (the held-out set is built in memory)")
        check(0 <= self.n_chain * n <= Addition.max_eval_rows, "task.n_chain",
              f"{self.n_chain} is negative or n_digits x n_chain is more than {Addition.max_eval_rows:,}")
        check(0 <= self.n_chain_confirm * n <= Addition.max_eval_rows, "task.n_chain_confirm",
              f"{self.n_chain_confirm} is negative or n_digits x n_chain_confirm is more than "
              f"{Addition.max_eval_rows:,}")
        check(0 <= self.chain_prob < 1, "task.chain_prob", f"{self.chain_prob} is not in [0, 1)")
        check(0 <= self.chain_prob_lead < 1, "task.chain_prob_lead", f"{self.chain_prob_lead} is not in [0, 1)")


@register
class Addition(OperandTask):
    name = "addition"
    Config = AdditionConfig
    symbol = "+"
    small = {"n_digits": 1, "n_heldout": 10, "n_chain": 3}

    headline = {"val/chain_exact_min": "lowest chain", "val/rule": "rule"}  # (the evaluation and done lines)
    confirmed = ("val/chain_exact_min", "val/rule")  # stop metrics checked on the confirmation sums

    @property
    def confirm_margin(self) -> float:
        """The screen lets a length through with 3 errors more than the stop allows (200 sums: 0.015)."""
        return screen_margin(self.n_chain)

    def __init__(self, cfg: AdditionConfig | None = None, seed: int = 0):
        super().__init__(cfg, seed)
        n = self.n = self.cfg.n_digits
        self.n_chain = self.cfg.n_chain
        self.lo = 0 if self.cfg.leading_zeros else 10 ** (n - 1)
        self.hi = 10**n - 1
        self._setup((n, n), self.cfg.chain_prob, self.cfg.chain_prob_lead)

    @staticmethod
    def answer_digits(n: int, m: int) -> int:
        return max(n, m) + 1

    def answer(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def answer_uniform_bits(self, k: int) -> np.ndarray:
        return np.array([1.0] + [log2(10)] * (k - 1))  # c_n is a carry: 0 or 1

    def eval_metrics(self, scores: dict[str, Score]) -> dict[str, float]:
        """val/chain_exact/<k> (sums whose longest carry chain is k digits), their minimum, and the rule:
        the lower of that minimum and held-out exact match."""
        out = super().eval_metrics(scores)
        chains = {name.split("_")[1]: s.exact for name, s in scores.items() if name.startswith("chain_")}
        out.update({f"val/chain_exact/{k}": v for k, v in chains.items()})
        if chains:
            out["val/chain_exact_min"] = min(chains.values())
            out["val/rule"] = min(out["val/chain_exact_min"], scores["val"].exact)
        return out

    def confirm_due(self, metrics: dict[str, float], stop_metric: str, stop_at: float) -> bool:
        """Near the stop, and for the rule the held-out sums (2,000, precise already) at stop_at: below it
        the rule cannot pass whatever the chain sums say."""
        held_out = stop_metric != "val/rule" or metrics["val/exact_match"] >= stop_at
        return held_out and super().confirm_due(metrics, stop_metric, stop_at)

    @classmethod
    def metric_names(cls, cfg: AdditionConfig) -> list[str]:
        return super().metric_names(cfg) + (["val/chain_exact_min", "val/rule"] if cfg.n_chain > 0 else [])

    @property
    def chain_pairs(self) -> dict[int, np.ndarray]:
        """{k: (N, 2) pairs whose longest carry chain is exactly k}: the rule's evaluation sets."""
        return {int(name.split("_")[1]): pairs for name, pairs in self.extra_pairs.items()}

    def _extra_sets(self, taken: set) -> dict[str, np.ndarray]:
        """`chain_k`: `n_chain` sums whose longest carry chain is exactly k, for k = 0..n-1; then the
        `n_chain_confirm` more per length of the confirmation (`confirm_pairs`, a stream of their own)."""
        sets = self._chain_sets(taken, self.n_chain, 7)
        self.confirm_pairs = self._chain_sets(taken, self.cfg.n_chain_confirm, 8)
        return sets

    def _chain_sets(self, taken: set, per_length: int, stream: int) -> dict[str, np.ndarray]:
        """`chain_k`: up to `per_length` distinct pairs whose longest carry chain is exactly k, for k = 0..n-1,
        none in `taken` (and at most half the pairs excluded in all; they are added to it). Proposals: uniform
        digits, then a pair summing to >= 10 at a random start and pairs summing to 9 above it; kept if the
        chain is exactly k."""
        n, lo = self.n, self.lo
        budget = ((10**n - lo) ** 2 // 2 - len(taken)) // n
        per_length = max(0, min(per_length, budget))
        if per_length == 0:
            return {}
        rng = rng_for(self.seed, stream)
        allowed = [np.arange(1 if (i == n - 1 and not self.leading_zeros) else 0, 10) for i in range(n)]  # 10^i
        out = {}
        for k in range(n):
            found: dict[tuple, None] = {}
            for _ in range(200):  # rounds of proposals; small n may not hold per_length such sums
                m = 4 * per_length
                a = np.stack([rng.choice(allowed[i], m) for i in range(n)], 1)  # (m, n) digit i = 10^i
                b = np.stack([rng.choice(allowed[i], m) for i in range(n)], 1)
                if k > 0:
                    start = rng.integers(0, n - k, m)[:, None]  # (m, 1) the position that makes the carry
                    idx = np.arange(n)[None]  # (1, n)
                    a_s = rng.integers(1, 10, (m, 1))
                    b_s = 10 - a_s + (rng.random((m, 1)) * a_s).astype(np.int64)  # uniform on 10-a..9
                    a = np.where(idx == start, a_s, a)
                    b = np.where(idx == start, b_s, b)
                    low = (idx == n - 1) & (not self.leading_zeros)  # a leading pair summing to 9: 1+8..8+1
                    a_c = low + (rng.random((m, n)) * (10 - 2 * low)).astype(np.int64)
                    chain = (idx > start) & (idx <= start + k)
                    a, b = np.where(chain, a_c, a), np.where(chain, 9 - a_c, b)
                powers = 10 ** np.arange(n, dtype=np.int64)
                av, bv = a @ powers, b @ powers
                keep = longest_chain(av, bv, n) == k
                for pair in zip(av[keep].tolist(), bv[keep].tolist()):
                    if pair not in taken and pair not in found:
                        found[pair] = None
                if len(found) >= per_length:
                    break
            pairs = np.array(list(found)[:per_length], dtype=np.int64).reshape(-1, 2)
            taken |= set(map(tuple, pairs.tolist()))
            out[f"chain_{k}"] = pairs
        return out


def screen_margin(n_chain: int) -> float:
    """How far below stop_at the lowest chain on n_chain sums may be for the confirmation to be scored."""
    return 3 / n_chain if n_chain else 0.0


def longest_chain(a: np.ndarray, b: np.ndarray, n: int, made_at: bool = False):
    """(B,) operands of n digits -> (B,) the longest run of positions a carry passes through: positions
    whose pair sums to exactly 9 and which receive a carry. In 0199 + 0001 the carry made at position 0
    (9 + 1) passes through position 1 (9 + 0) into position 2: a chain of length 1; 1999 + 0001: 2.
    With `made_at`, also (B,) the position that makes the carry of the longest chain (the lowest such;
    -1 for sums without a chain): 0199 + 0001 -> 0."""
    carry = np.zeros(len(a), dtype=bool)
    run = np.zeros(len(a), dtype=np.int64)
    best, start = np.zeros(len(a), dtype=np.int64), np.full(len(a), -1, dtype=np.int64)
    for i in range(n):  # least significant first
        s = (a // 10**i) % 10 + (b // 10**i) % 10  # (B,) pair sums
        passes = carry & (s == 9)
        run = np.where(passes, run + 1, 0)
        start = np.where(run > best, i - run, start)
        best = np.maximum(best, run)
        carry = (s >= 10) | passes
    return (best, start) if made_at else best
