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
H(q + (1-q)/10, (1-q)/10 x 9) bits instead of log2 10.

The stream never yields a held-out or chain pair: colliding rows are redrawn, so the operands follow
that law restricted to the other pairs (`OperandLaw`). The floors above are for that law, exactly: for
n = 8 it moves them by about 1e-13 bit, for n = 2 with 2,000 of 8,100 pairs held out the operands carry
log2 6100 = 12.575 bits, not 12.984.
"""

from __future__ import annotations

import numpy as np

from lab.tasks.base import Batch, Task, log2, rng_for

DIGITS = [str(i) for i in range(10)]
S, E, PLUS, EQ = 10, 11, 12, 13


class OperandLaw:
    """The stream's law of the 2n operand digits a_{n-1}..a_0 b_{n-1}..b_0, exactly.

    Base law mu: every a digit uniform over the allowed digits (no leading zero unless `leading_zeros`);
    b_{n-1} likewise; each lower b_i equal to 9 - a_i with probability `chain_prob` (a pair summing to
    9, which a carry passes through), else uniform on 0..9. chain_prob = 0 is the uniform law.

    The stream never yields an excluded pair (held-out or carry-chain sets), so its law is mu
    restricted to the other strings. With m(p) = mu(excluded below p) / mu(p), the excluded share of a
    prefix p, the law of the next digit is P(d | p) = (mu(d | p) - m(p d) mu(d | p)) / (1 - m(p)).
    Prefixes with nothing excluded below them (all but at most |excluded| per depth) follow mu; the
    others are tabulated once."""

    def __init__(self, n: int, leading_zeros: bool, excluded: np.ndarray, chain_prob: float = 0.0):
        self.n, self.q = n, chain_prob
        lead = np.ones(10, dtype=bool)
        lead[0] = leading_zeros
        self.allowed = np.stack([lead if k % n == 0 else np.ones(10, dtype=bool) for k in range(2 * n)])  # (2n, 10)
        self.uniform = self.allowed / self.allowed.sum(1, keepdims=True)  # (2n, 10)
        digits = np.concatenate([_digits(excluded[:, 0], n), _digits(excluded[:, 1], n)], axis=1)  # (H, 2n)
        rows = np.arange(len(digits))
        pi = np.stack([self.base(k, digits[:, :k])[rows, digits[:, k]] for k in range(2 * n)], 1)  # (H, 2n)
        ones = np.ones((len(digits), 1))
        head = np.cumprod(np.concatenate([ones, pi], 1), 1)  # (H, 2n+1) mu(first k digits)
        tail = np.cumprod(np.concatenate([ones, pi[:, ::-1]], 1), 1)[:, ::-1]  # (H, 2n+1) mu(rest | first k)
        excluded_mass = float(tail[:, 0].sum())  # mu(excluded)
        keys = digits.astype(np.uint8)
        self.index: list[dict[bytes, int]] = []  # depth k: prefix -> row of table[k]
        self.table: list[np.ndarray] = []  # depth k: (D_k, 10) law of digit k after each tabulated prefix
        self.weight: list[np.ndarray] = []  # depth k: (D_k,) stream probability of each tabulated prefix
        for k in range(2 * n):
            index: dict[bytes, int] = {}
            inv = np.array([index.setdefault(r[:k].tobytes(), len(index)) for r in keys], dtype=np.int64)  # (H,)
            first = np.zeros(len(index), dtype=np.int64)
            first[inv[::-1]] = rows[::-1]  # a row of each prefix
            below = np.zeros((len(index), 10))  # (D_k, 10) excluded share of each child, relative to mu(p)
            np.add.at(below, (inv, digits[:, k]), tail[:, k])
            share = below.sum(1)  # (D_k,) m(p)
            law = (self.base(k, digits[first, :k]) - below) / np.where(share < 1, 1 - share, 1)[:, None]
            self.index.append(index)
            self.table.append(np.clip(law, 0.0, None))  # (fully excluded children: 0, not -1e-17)
            self.weight.append(head[first, k] * (1 - share) / (1 - excluded_mass))

    def base(self, k: int, prefix: np.ndarray) -> np.ndarray:
        """(B, k) first digits -> (B, 10) mu's law of digit k."""
        out = np.repeat(self.uniform[k][None], len(prefix), 0)  # (B, 10)
        i = 2 * self.n - 1 - k  # digit k is b_i when k >= n
        if self.q > 0 and k > self.n:  # a lower b digit: 9 - a_i with probability q
            a_i = prefix[:, self.n - 1 - i]  # (B,)
            out *= 1 - self.q
            out[np.arange(len(prefix)), 9 - a_i] += self.q
        return out

    def probs(self, prefixes: np.ndarray) -> np.ndarray:
        """(B, k) first digits -> (B, 10) float64 law of digit k under the stream's law."""
        k = prefixes.shape[1]
        out = self.base(k, prefixes)
        keys = prefixes.astype(np.uint8)
        for row, key in enumerate(keys):
            i = self.index[k].get(key.tobytes())
            if i is not None:
                out[row] = self.table[k][i]
        return out

    def sample(self, rng: np.random.Generator, size: int, lo: int, hi: int) -> np.ndarray:
        """(size, 2) pairs drawn from mu (the exclusion is the caller's: it redraws)."""
        pairs = rng.integers(lo, hi + 1, size=(size, 2), dtype=np.int64)  # (size, 2)
        if self.q > 0:  # each lower pair sums to 9 with probability q
            powers = 10 ** np.arange(self.n - 1, dtype=np.int64)  # (n-1,) significance of b_0..b_{n-2}
            a_i = (pairs[:, :1] // powers) % 10  # (size, n-1)
            b_i = (pairs[:, 1:] // powers) % 10
            tie = rng.random((size, self.n - 1)) < self.q
            pairs[:, 1] += ((np.where(tie, 9 - a_i, b_i) - b_i) * powers).sum(1)
        return pairs

    def entropies(self) -> np.ndarray:
        """(2n,) exact H(digit k | digits < k) in bits: the untabulated prefixes follow mu, whose entropy
        at depth k is the same for every prefix; the tabulated ones are summed one by one."""
        out = np.zeros(2 * self.n)
        for k in range(2 * self.n):
            p = self.table[k]
            h = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(1)  # (D_k,)
            b = self.base(k, np.zeros((1, k), dtype=np.int64))[0]
            h_base = float(-(b * np.log2(np.where(b > 0, b, 1.0))).sum())
            w = self.weight[k]
            out[k] = float(w @ h) + (1.0 - float(w.sum())) * h_base
        return out


def _digits(v: np.ndarray, width: int) -> np.ndarray:
    """(B,) ints -> (B, width) digits, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # (width,)
    return (np.asarray(v, dtype=np.int64)[:, None] // powers) % 10


class Addition(Task):
    def __init__(
        self,
        n_digits: int = 8,
        leading_zeros: bool = False,
        reverse_answer: bool = False,
        loss_on: str = "all",
        n_heldout: int = 2000,
        seed: int = 0,
        label_noise: float = 0.0,
        n_chain: int = 0,
        chain_prob: float = 0.0,
    ):
        self.n = n_digits
        self.leading_zeros = leading_zeros
        self.reverse_answer = reverse_answer
        self.seed = seed
        self.label_noise = label_noise
        self.lo = 0 if leading_zeros else 10 ** (n_digits - 1)
        self.hi = 10**n_digits - 1
        n = n_digits

        self.vocab = DIGITS + ["s", "e", "+", "="]
        self.seq_len = 3 * n + 5
        self.answer_start = 2 * n + 3
        c_names = [f"c{i}" for i in range(n, -1, -1)]
        if reverse_answer:
            c_names = c_names[::-1]
        self.target_names = (
            [f"a{i}" for i in range(n - 1, -1, -1)] + ["+"]
            + [f"b{i}" for i in range(n - 1, -1, -1)] + ["="] + c_names + ["e"]
        )

        self.known = np.zeros(self.seq_len, dtype=bool)
        self.known[[0, n + 1, 2 * n + 2, self.seq_len - 1]] = True  # s + = e
        self.digit_cols = np.r_[1 : n + 1, n + 2 : 2 * n + 2]  # token columns of a_{n-1}..a_0 b_{n-1}..b_0
        self.loss_mask = np.ones(self.seq_len - 1, dtype=bool)
        if loss_on == "answer":
            self.loss_mask[: self.answer_start - 1] = False

        self.heldout_pairs = self._draw_heldout(n_heldout)
        self.chain_pairs = self._draw_chains(n_chain, set(map(tuple, self.heldout_pairs.tolist())))
        excluded = np.concatenate([self.heldout_pairs, *self.chain_pairs.values()])  # never in the stream
        self._heldout_set = set(map(tuple, excluded.tolist()))
        self.law = OperandLaw(n, leading_zeros, excluded, chain_prob)

        first = log2(10) if leading_zeros else log2(9)
        operand = np.array([first] + [log2(10)] * (n - 1))
        zeros = np.zeros(1)
        answer = np.append(noisy_answer_floor(label_noise, n + 1), 0.0)  # c digits, then e
        self.floor_bits = np.concatenate([operand, zeros, operand, zeros, answer])
        self.floor_bits[self.digit_cols - 1] = self.law.entropies()  # exact, held-out pairs excluded
        carry = np.array([1.0] + [log2(10)] * n)  # c_n is a carry: 0 or 1
        if reverse_answer:
            carry = carry[::-1]
        self.uniform_bits = np.concatenate([operand, zeros, operand, zeros, carry, zeros])
        self.coupled_ids = self._coupled_ids()

        self._heldout_clean = self.encode(self.heldout_pairs[:, 0], self.heldout_pairs[:, 1])
        self._heldout = self._add_noise(self._heldout_clean.copy(), rng_for(seed, 6))

    def _coupled_ids(self) -> np.ndarray:
        """(T-1,) significance + 1 per input position: a_i and b_i get i + 1 (the digit they hold), '='
        and the answer digits get i + 1 for the c_i they predict (the token read is the one before it),
        the rest 0. n = 8, answer most significant first:

            reads    s a7 .. a0 +  b7 .. b0 =  c8 c7 .. c1 c0
            predicts a7 a6 .. +  b7 b6 .. = c8 c7 c6 .. c0 e
            id       0  8 ..  1 0  8  ..  1 9  8  .. 2  1  0

        so the query that predicts c_i carries the same embedding as the keys of a_i and b_i."""
        n = self.n
        operand = np.arange(n, 0, -1)  # a_{n-1}..a_0 -> n..1
        answer = np.arange(n + 1, 0, -1)  # predicts c_n..c_0 -> n+1..1
        if self.reverse_answer:
            answer = answer[::-1]
        return np.concatenate([[0], operand, [0], operand, answer, [0]]).astype(np.int64)

    # -- encoding -------------------------------------------------------------------------------------
    _digits = staticmethod(_digits)

    def encode(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(B,) operands -> (B, T) token rows."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        B, n = len(a), self.n
        c = self._digits(a + b, n + 1)  # (B, n+1)
        if self.reverse_answer:
            c = c[:, ::-1]
        col = lambda tok: np.full((B, 1), tok, dtype=np.int64)  # noqa: E731
        return np.concatenate(
            [col(S), self._digits(a, n), col(PLUS), self._digits(b, n), col(EQ), c, col(E)], axis=1
        )

    def operands(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) token rows -> the two operands (B,), (B,)."""
        n = self.n
        powers = 10 ** np.arange(n - 1, -1, -1, dtype=np.int64)
        return x[:, 1 : 1 + n] @ powers, x[:, 2 + n : 2 + 2 * n] @ powers

    def token_text(self, token: int) -> str:
        return {S: "", E: "\n"}.get(token, self.vocab[token])

    # -- sampling -------------------------------------------------------------------------------------
    def _draw_heldout(self, count: int) -> np.ndarray:
        """Held-out pairs, uniform on the operand range whatever the stream's law (`chain_prob`)."""
        rng = rng_for(self.seed, 0)
        pairs = np.zeros((0, 2), dtype=np.int64)
        while len(pairs) < count:
            more = rng.integers(self.lo, self.hi + 1, size=(count - len(pairs), 2), dtype=np.int64)
            pairs = np.unique(np.concatenate([pairs, more]), axis=0)
        return rng.permutation(pairs)

    def schedule(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return step * batch_size + np.arange(batch_size, dtype=np.int64), np.ones(batch_size, dtype=bool)

    def layout(self, ids: np.ndarray) -> np.ndarray:
        row = np.zeros(self.seq_len, dtype=np.int64)
        row[self.known] = [S, PLUS, EQ, E]
        return np.repeat(row[None], len(ids), axis=0)  # (B, T)

    def law_probs(self, x: np.ndarray, t: int) -> np.ndarray:
        """The operand digit at target t given the digits before it, under `OperandLaw`."""
        k = int(np.flatnonzero(self.digit_cols == t + 1)[0])  # which of the 2n operand digits
        out = np.zeros((len(x), self.vocab_size))
        out[:, :10] = self.law.probs(x[:, self.digit_cols[:k]])
        return out  # (B, V)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, 1, step)
        pairs = self.law.sample(rng, batch_size, self.lo, self.hi)  # (B, 2)
        held = self._held_out_rows(pairs)
        while held.any():  # redraw collisions with the held-out set
            pairs[held] = self.law.sample(rng, int(held.sum()), self.lo, self.hi)
            held = self._held_out_rows(pairs)
        x = self._add_noise(self.encode(pairs[:, 0], pairs[:, 1]), rng_for(self.seed, 5, step))
        return Batch(x, *self.schedule(step, batch_size))

    def _add_noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace the answer of each row w.p. label_noise by a uniformly drawn other digit string."""
        if self.label_noise <= 0:
            return x
        m = self.n + 1
        cols = slice(self.answer_start, self.answer_start + m)
        digits = x[:, cols][:, ::-1] if self.reverse_answer else x[:, cols]  # (B, m) most significant first
        value = digits @ (10 ** np.arange(m - 1, -1, -1, dtype=np.int64))  # (B,)
        flip = rng.random(len(x)) < self.label_noise
        shift = rng.integers(1, 10**m, size=len(x))  # 1..K-1: never the right answer
        wrong = self._digits((value + shift) % 10**m, m)
        x[flip, cols] = wrong[flip][:, ::-1] if self.reverse_answer else wrong[flip]
        return x

    def _draw_chains(self, per_length: int, taken: set) -> dict[int, np.ndarray]:
        """Up to `per_length` distinct pairs whose longest carry chain is exactly k, for k = 0..n-1, none in
        `taken` (and at most half the pairs excluded in all). Proposals: uniform digits, then a pair
        summing to >= 10 at a random start and pairs summing to 9 above it; kept if the chain is exactly k."""
        n, lo = self.n, self.lo
        budget = ((10**n - lo) ** 2 // 2 - len(taken)) // n
        per_length = max(0, min(per_length, budget))
        if per_length == 0:
            return {}
        rng = rng_for(self.seed, 7)
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
            out[k] = pairs
        return out

    def _held_out_rows(self, pairs: np.ndarray) -> np.ndarray:
        return np.array([(a, b) in self._heldout_set for a, b in pairs.tolist()], dtype=bool)

    def eval_sets(self) -> dict[str, np.ndarray]:
        sets = {"val": self._heldout}
        if self.label_noise > 0:  # noisy held-out labels, and the true sums to score the rule
            sets["val_clean"] = self._heldout_clean
        for k, pairs in self.chain_pairs.items():  # the rule, by carry-chain length (true sums)
            sets[f"chain_{k}"] = self.encode(pairs[:, 0], pairs[:, 1])
        return sets


def longest_chain(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(B,) operands of n digits -> (B,) the longest run of positions a carry passes through: positions
    whose pair sums to exactly 9 and which receive a carry. In 0199 + 0001 the carry made at position 0
    (9 + 1) passes through position 1 (9 + 0) into position 2: a chain of length 1; 1999 + 0001: 2."""
    carry = np.zeros(len(a), dtype=bool)
    run = np.zeros(len(a), dtype=np.int64)
    best = np.zeros(len(a), dtype=np.int64)
    for i in range(n):  # least significant first
        s = (a // 10**i) % 10 + (b // 10**i) % 10  # (B,) pair sums
        passes = carry & (s == 9)
        run = np.where(passes, run + 1, 0)
        best = np.maximum(best, run)
        carry = (s >= 10) | passes
    return best


def noisy_answer_floor(eps: float, m: int) -> np.ndarray:
    """Entropy in bits of each of m answer digits (in writing order) when the answer is right w.p. 1 - eps
    and otherwise uniform over the other 10^m - 1 strings of m digits.

    P_j = P(first j digits right) = (1 - eps) + eps (10^(m-j) - 1) / (K - 1), K = 10^m. After a wrong
    digit the rest is uniform (log2 10 each); after j right digits the next is right w.p. P_{j+1} / P_j
    and each of the 9 others has probability eps 10^(m-j-1) / ((K - 1) P_j). The sum over digits is
    H(eps) + eps log2(K - 1)."""
    out = np.zeros(m)
    if eps <= 0:
        return out
    K = 10**m
    P = [(1 - eps) + eps * (10 ** (m - j) - 1) / (K - 1) for j in range(m + 1)]
    for j in range(m):
        q = P[j + 1] / P[j]
        r = eps * 10 ** (m - j - 1) / ((K - 1) * P[j])
        h = -(q * np.log2(q) if q > 0 else 0.0) - 9 * (r * np.log2(r) if r > 0 else 0.0)
        out[j] = P[j] * h + (1 - P[j]) * np.log2(10)
    return out
