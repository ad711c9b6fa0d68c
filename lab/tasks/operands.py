"""Arithmetic on digit strings as an endless stream: the machinery addition and multiplication share.

Token layout (a of n digits, b of m digits, an answer of k digits, most significant first):

    s a_{n-1} .. a_0 OP b_{m-1} .. b_0 = c_{k-1} .. c_0 e        (n + m + k + 4 tokens)

    vocabulary: 0-9 are digits 0-9, then s=10, e=11, OP=12, ==13 (14 tokens)
    8-digit addition: s 1 2 3 4 5 6 7 8 + 8 7 6 5 4 3 2 1 = 0 9 9 9 9 9 9 9 9 e

With `reverse_answer` the answer is written least significant digit first. `s OP = e` are known to the
receiver (`lab.bits`); the operand digits are sent by the model (`loss_on=all`) or by their exact law
(`loss_on=answer`), the answer digits by the model. A subclass says what the answer is (`answer`,
`answer_digits`), its symbol and name, and may add evaluation sets that stay out of the stream
(`_extra_sets`, e.g. addition's carry chains).

The operands are uniform on their ranges ([10^(n-1), 10^n - 1], or from 0 with `leading_zeros`), except
that the stream never yields a held-out (or other evaluation) pair: colliding rows are redrawn, so the
stream's law is the uniform one restricted to the other pairs, and the floors are that law's exact
conditional entropies (`OperandLaw`). The answer is determined by the operands (floor 0) unless
`label_noise` eps replaces it, w.p. eps, by one of the other 10^k - 1 digit strings, drawn uniformly
(fixed per example); it then carries H(eps) + eps log2(10^k - 1) bits (`noisy_answer_floor`).
"""

from __future__ import annotations

import numpy as np

from lab.tasks.base import Batch, Task, log2, rng_for

DIGITS = [str(i) for i in range(10)]
S, E, OP, EQ = 10, 11, 12, 13


def digits(v: np.ndarray, width: int) -> np.ndarray:
    """(B,) ints -> (B, width) digits, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # (width,)
    return (np.asarray(v, dtype=np.int64)[:, None] // powers) % 10


class OperandLaw:
    """The stream's law of the n + m operand digits a_{n-1}..a_0 b_{m-1}..b_0, exactly.

    Base law mu: every digit uniform over the allowed digits (no leading zero unless `leading_zeros`);
    with `chain_prob` q > 0 (addition, n = m), each b_i below the leading one equals 9 - a_i with
    probability q (a pair summing to 9, which a carry passes through), else uniform on 0..9; with
    `chain_prob_lead` q' > 0 the leading b equals 9 - a with probability q' where 9 - a is an allowed
    leading digit (1+8..8+1 without leading zeros; a = 9 then leaves b uniform), else uniform.

    The stream never yields an excluded pair (held-out or other evaluation sets), so its law is mu
    restricted to the other strings. With m(p) = mu(excluded below p) / mu(p), the excluded share of a
    prefix p, the law of the next digit is P(d | p) = (mu(d | p) - m(p d) mu(d | p)) / (1 - m(p)).
    Prefixes with nothing excluded below them (all but at most |excluded| per depth) follow mu; the
    others are tabulated once."""

    def __init__(self, widths: tuple[int, int], leading_zeros: bool, excluded: np.ndarray, chain_prob: float = 0.0,
                 chain_prob_lead: float = 0.0):
        n, m = self.widths = widths
        if (chain_prob > 0 or chain_prob_lead > 0) and n != m:
            raise ValueError("chain_prob needs operands of equal width")
        self.q, self.q_lead, self.leading_zeros = chain_prob, chain_prob_lead, leading_zeros
        self.lo = np.array([0 if leading_zeros else 10 ** (w - 1) for w in widths], dtype=np.int64)  # (2,)
        self.hi = np.array([10**w - 1 for w in widths], dtype=np.int64)
        lead = np.ones(10, dtype=bool)
        lead[0] = leading_zeros
        self.allowed = np.stack([lead if k in (0, n) else np.ones(10, dtype=bool) for k in range(n + m)])  # (n+m, 10)
        self.uniform = self.allowed / self.allowed.sum(1, keepdims=True)  # (n+m, 10)
        excluded = np.asarray(excluded, dtype=np.int64).reshape(-1, 2)
        digits_ = np.concatenate([digits(excluded[:, 0], n), digits(excluded[:, 1], m)], axis=1)  # (H, n+m)
        rows = np.arange(len(digits_))
        pi = np.stack([self.base(k, digits_[:, :k])[rows, digits_[:, k]] for k in range(n + m)], 1)  # (H, n+m)
        ones = np.ones((len(digits_), 1))
        head = np.cumprod(np.concatenate([ones, pi], 1), 1)  # (H, n+m+1) mu(first k digits)
        tail = np.cumprod(np.concatenate([ones, pi[:, ::-1]], 1), 1)[:, ::-1]  # (H, n+m+1) mu(rest | first k)
        excluded_mass = float(tail[:, 0].sum())  # mu(excluded)
        keys = digits_.astype(np.uint8)
        self.index: list[dict[bytes, int]] = []  # depth k: prefix -> row of table[k]
        self.table: list[np.ndarray] = []  # depth k: (D_k, 10) law of digit k after each tabulated prefix
        self.weight: list[np.ndarray] = []  # depth k: (D_k,) stream probability of each tabulated prefix
        for k in range(n + m):
            index: dict[bytes, int] = {}
            inv = np.array([index.setdefault(r[:k].tobytes(), len(index)) for r in keys], dtype=np.int64)  # (H,)
            first = np.zeros(len(index), dtype=np.int64)
            first[inv[::-1]] = rows[::-1]  # a row of each prefix
            below = np.zeros((len(index), 10))  # (D_k, 10) excluded share of each child, relative to mu(p)
            np.add.at(below, (inv, digits_[:, k]), tail[:, k])
            share = below.sum(1)  # (D_k,) m(p)
            law = (self.base(k, digits_[first, :k]) - below) / np.where(share < 1, 1 - share, 1)[:, None]
            self.index.append(index)
            self.table.append(np.clip(law, 0.0, None))  # (fully excluded children: 0, not -1e-17)
            self.weight.append(head[first, k] * (1 - share) / (1 - excluded_mass))
            if k == n:  # (the leading b digit's law depends on a_{n-1}: `entropies` splits its prefixes by it)
                self.lead_of = digits_[first, 0]  # (D_n,) a_{n-1} of each tabulated prefix
        # stream probability of each a_{n-1} (its law is mu's marginal with the excluded strings taken out)
        self.lead_mass = (self.uniform[0] - np.bincount(digits_[:, 0], tail[:, 0], 10)) / (1 - excluded_mass)

    def base(self, k: int, prefix: np.ndarray) -> np.ndarray:
        """(B, k) first digits -> (B, 10) mu's law of digit k."""
        n = self.widths[0]
        out = np.repeat(self.uniform[k][None], len(prefix), 0)  # (B, 10)
        i = 2 * n - 1 - k  # digit k is b_i when k >= n
        if self.q > 0 and k > n:  # a lower b digit: 9 - a_i with probability q
            a_i = prefix[:, n - 1 - i]  # (B,)
            out *= 1 - self.q
            out[np.arange(len(prefix)), 9 - a_i] += self.q
        if self.q_lead > 0 and k == n:  # the leading b digit: 9 - a_{n-1} w.p. q' where that is allowed
            rows = np.flatnonzero(self.allowed[n][9 - prefix[:, 0]])  # (B',)
            out[rows] *= 1 - self.q_lead
            out[rows, 9 - prefix[rows, 0]] += self.q_lead
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

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """(size, 2) pairs drawn from mu (the exclusion is the caller's: it redraws)."""
        if self.lo[0] == self.lo[1] and self.hi[0] == self.hi[1]:
            pairs = rng.integers(self.lo[0], self.hi[0] + 1, size=(size, 2), dtype=np.int64)  # (size, 2)
        else:
            pairs = np.stack([rng.integers(self.lo[j], self.hi[j] + 1, size=size, dtype=np.int64) for j in (0, 1)], 1)
        if self.q > 0:  # each lower pair sums to 9 with probability q
            n = self.widths[0]
            powers = 10 ** np.arange(n - 1, dtype=np.int64)  # (n-1,) significance of b_0..b_{n-2}
            a_i = (pairs[:, :1] // powers) % 10  # (size, n-1)
            b_i = (pairs[:, 1:] // powers) % 10
            tie = rng.random((size, n - 1)) < self.q
            pairs[:, 1] += ((np.where(tie, 9 - a_i, b_i) - b_i) * powers).sum(1)
        if self.q_lead > 0:  # the leading pair sums to 9 with probability q' where it can
            n, top = self.widths[0], 10 ** (self.widths[0] - 1)
            a_l, b_l = pairs[:, 0] // top % 10, pairs[:, 1] // top % 10  # (size,)
            tie = (rng.random(size) < self.q_lead) & self.allowed[n][9 - a_l]
            pairs[:, 1] += (np.where(tie, 9 - a_l, b_l) - b_l) * top
        return pairs

    def mass(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(B,), (B,) operands -> (B,) their probability under mu (before the exclusion)."""
        d = np.concatenate([digits(a, self.widths[0]), digits(b, self.widths[1])], axis=1)  # (B, n+m)
        rows = np.arange(len(d))
        return np.prod([self.base(k, d[:, :k])[rows, d[:, k]] for k in range(d.shape[1])], axis=0)

    def entropies(self) -> np.ndarray:
        """(n+m,) exact H(digit k | digits < k) in bits: the untabulated prefixes follow mu, whose entropy
        at depth k is the same for every prefix (but for the leading b digit under `chain_prob_lead`, where
        it depends on a_{n-1}: there the untabulated prefixes are summed per a_{n-1}); the tabulated ones
        are summed one by one."""
        entropy = lambda p: -(p * np.log2(np.where(p > 0, p, 1.0))).sum(-1)  # noqa: E731
        n = self.widths[0]
        out = np.zeros(sum(self.widths))
        for k in range(len(out)):
            h = entropy(self.table[k])  # (D_k,)
            w = self.weight[k]
            if k == n and self.q_lead > 0:
                prefixes = np.zeros((10, k), dtype=np.int64)
                prefixes[:, 0] = np.arange(10)  # a_{n-1} = 0..9, the rest of a irrelevant
                h_lead = entropy(self.base(k, prefixes))  # (10,)
                untabulated = self.lead_mass - np.bincount(self.lead_of, w, 10)  # (10,) stream mass per a_{n-1}
                out[k] = float(w @ h) + float(untabulated @ h_lead)
                continue
            h_base = float(entropy(self.base(k, np.zeros((1, k), dtype=np.int64))[0]))
            out[k] = float(w @ h) + (1.0 - float(w.sum())) * h_base
        return out


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


class OperandTask(Task):
    """`a OP b = answer` on digit strings, an endless stream of fresh examples (see the module docstring).

    Subclasses set `symbol` and implement `answer`; `answer_digits(n, m)` gives the answer's width."""

    symbol = "?"
    significance = True
    max_eval_rows = 1_000_000  # held-out and other evaluation rows are built in memory

    @staticmethod
    def answer_digits(n: int, m: int) -> int:
        raise NotImplementedError

    def answer(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(B,), (B,) operands -> (B,) the true answers."""
        raise NotImplementedError

    def _extra_sets(self, taken: set) -> dict[str, np.ndarray]:
        """Evaluation sets besides "val", each (N, 2) operand pairs none of `taken` (add them to it);
        they are excluded from the stream like the held-out set."""
        return {}

    def _setup(self, widths: tuple[int, int], chain_prob: float = 0.0, chain_prob_lead: float = 0.0) -> None:
        """Layout, loss mask, held-out and extra sets, the stream's law and the floors, from `self.cfg`
        (leading_zeros, reverse_answer, n_heldout) and the operands' widths."""
        n, m = self.widths = widths
        k = self.answer_digits(n, m)
        cfg, seed, label_noise = self.cfg, self.seed, self.label_noise
        leading_zeros = self.leading_zeros = cfg.leading_zeros
        reverse_answer = self.reverse_answer = cfg.reverse_answer
        self.vocab = DIGITS + ["s", "e", self.symbol, "="]
        self.seq_len = n + m + k + 4
        self.answer_start = n + m + 3
        c_names = [f"c{i}" for i in range(k - 1, -1, -1)]
        if reverse_answer:
            c_names = c_names[::-1]
        self.target_names = ([f"a{i}" for i in range(n - 1, -1, -1)] + [self.symbol]
                             + [f"b{i}" for i in range(m - 1, -1, -1)] + ["="] + c_names + ["e"])
        self.known = np.zeros(self.seq_len, dtype=bool)
        self.known[[0, n + 1, n + m + 2, self.seq_len - 1]] = True  # s OP = e
        self.digit_cols = np.r_[1 : n + 1, n + 2 : n + m + 2]  # token columns of the n + m operand digits
        self.loss_mask = np.ones(self.seq_len - 1, dtype=bool)
        if self.loss_on == "answer":
            self.loss_mask[: self.answer_start - 1] = False

        self.law = OperandLaw(widths, leading_zeros, np.zeros((0, 2), dtype=np.int64), chain_prob,
                              chain_prob_lead)  # (for sampling)
        self.heldout_pairs = self._draw_heldout(cfg.n_heldout)
        taken = set(map(tuple, self.heldout_pairs.tolist()))
        self.confirm_pairs: dict[str, np.ndarray] = {}  # (a subclass's _extra_sets may add its own)
        self.extra_pairs = self._extra_sets(taken)
        excluded = np.concatenate([self.heldout_pairs, *self.extra_pairs.values(),
                                   *self.confirm_pairs.values()])  # never in the stream
        self._excluded = set(map(tuple, excluded.tolist()))
        self.law = OperandLaw(widths, leading_zeros, excluded, chain_prob, chain_prob_lead)

        zeros = np.zeros(1)
        self.floor_bits = np.zeros(self.seq_len - 1)
        self.floor_bits[self.digit_cols - 1] = self.law.entropies()  # exact, excluded pairs left out
        self.floor_bits[self.answer_start - 1 : -1] = noisy_answer_floor(label_noise, k)
        operand = np.log2(self.law.allowed.sum(1))  # (n+m,)
        answer = self.answer_uniform_bits(k)
        if reverse_answer:
            answer = answer[::-1]
        self.uniform_bits = np.concatenate([operand[:n], zeros, operand[n:], zeros, answer, zeros])
        self.coupled_ids = self._coupled_ids(k)

        self._heldout_clean = self.encode(self.heldout_pairs[:, 0], self.heldout_pairs[:, 1])
        self._heldout = self._add_noise(self._heldout_clean.copy(), rng_for(seed, 6))

    def answer_uniform_bits(self, k: int) -> np.ndarray:
        """(k,) log2 of the values each answer digit can take, most significant first."""
        return np.full(k, log2(10))

    def _coupled_ids(self, k: int) -> np.ndarray:
        """(T-1,) significance + 1 per input position: a_i and b_i get i + 1 (the digit they hold), '='
        and the answer digits get i + 1 for the c_i they predict (the token read is the one before it),
        the rest 0. 8-digit addition, answer most significant first:

            reads    s a7 .. a0 +  b7 .. b0 =  c8 c7 .. c1 c0
            predicts a7 a6 .. +  b7 b6 .. = c8 c7 c6 .. c0 e
            id       0  8 ..  1 0  8  ..  1 9  8  .. 2  1  0

        so the query that predicts c_i carries the same embedding as the keys of a_i and b_i."""
        n, m = self.widths
        answer = np.arange(k, 0, -1)  # predicts c_{k-1}..c_0 -> k..1
        if self.reverse_answer:
            answer = answer[::-1]
        return np.concatenate([[0], np.arange(n, 0, -1), [0], np.arange(m, 0, -1), answer, [0]]).astype(np.int64)

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(B,) operands -> (B, T) token rows."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        (n, m), B = self.widths, len(a)
        c = digits(self.answer(a, b), self.seq_len - self.answer_start - 1)  # (B, k)
        if self.reverse_answer:
            c = c[:, ::-1]
        col = lambda tok: np.full((B, 1), tok, dtype=np.int64)  # noqa: E731
        return np.concatenate([col(S), digits(a, n), col(OP), digits(b, m), col(EQ), c, col(E)], axis=1)

    def operands(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) token rows -> the two operands (B,), (B,)."""
        n, m = self.widths
        value = lambda d: d @ (10 ** np.arange(d.shape[1] - 1, -1, -1, dtype=np.int64))  # noqa: E731
        return value(x[:, 1 : 1 + n]), value(x[:, 2 + n : 2 + n + m])

    def token_text(self, token: int) -> str:
        return {S: "", E: "\n"}.get(token, self.vocab[token])

    # -- sampling -------------------------------------------------------------------------------------
    def _draw_heldout(self, count: int) -> np.ndarray:
        """Held-out pairs, uniform on the operand ranges whatever the stream's law (`chain_prob`)."""
        rng = rng_for(self.seed, 0)
        lo, hi = self.law.lo, self.law.hi
        pairs = np.zeros((0, 2), dtype=np.int64)
        while len(pairs) < count:
            if lo[0] == lo[1] and hi[0] == hi[1]:
                more = rng.integers(lo[0], hi[0] + 1, size=(count - len(pairs), 2), dtype=np.int64)
            else:
                more = np.stack([rng.integers(lo[j], hi[j] + 1, size=count - len(pairs)) for j in (0, 1)], 1)
            pairs = np.unique(np.concatenate([pairs, more]), axis=0)
        return rng.permutation(pairs)

    def schedule(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return step * batch_size + np.arange(batch_size, dtype=np.int64), np.ones(batch_size, dtype=bool)

    def known_tokens(self, ids: np.ndarray) -> np.ndarray:
        row = np.zeros(self.seq_len, dtype=np.int64)
        row[self.known] = [S, OP, EQ, E]
        return np.repeat(row[None], len(ids), axis=0)  # (B, T)

    def law_probs(self, x: np.ndarray, t: int) -> np.ndarray:
        """The operand digit at target t given the digits before it, under `OperandLaw`."""
        k = int(np.flatnonzero(self.digit_cols == t + 1)[0])  # which of the n + m operand digits
        out = np.zeros((len(x), self.vocab_size))
        out[:, :10] = self.law.probs(x[:, self.digit_cols[:k]])
        return out  # (B, V)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, 1, step)
        pairs = self.law.sample(rng, batch_size)  # (B, 2)
        held = self._excluded_rows(pairs)
        while held.any():  # redraw collisions with the held-out and evaluation sets
            pairs[held] = self.law.sample(rng, int(held.sum()))
            held = self._excluded_rows(pairs)
        x = self._add_noise(self.encode(pairs[:, 0], pairs[:, 1]), rng_for(self.seed, 5, step))
        return Batch(x, *self.schedule(step, batch_size))

    def _excluded_rows(self, pairs: np.ndarray) -> np.ndarray:
        return np.array([(a, b) in self._excluded for a, b in pairs.tolist()], dtype=bool)

    def _add_noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replace the answer of each row w.p. label_noise by a uniformly drawn other digit string."""
        if self.label_noise <= 0:
            return x
        m = self.seq_len - self.answer_start - 1
        cols = slice(self.answer_start, self.answer_start + m)
        digits_ = x[:, cols][:, ::-1] if self.reverse_answer else x[:, cols]  # (B, m) most significant first
        value = digits_ @ (10 ** np.arange(m - 1, -1, -1, dtype=np.int64))  # (B,)
        flip = rng.random(len(x)) < self.label_noise
        shift = rng.integers(1, 10**m, size=len(x))  # 1..K-1: never the right answer
        wrong = digits((value + shift) % 10**m, m)
        x[flip, cols] = wrong[flip][:, ::-1] if self.reverse_answer else wrong[flip]
        return x

    def eval_sets(self) -> dict[str, np.ndarray]:
        sets = {"val": self._heldout}
        if self.label_noise > 0:  # noisy held-out labels, and the true answers to score the rule
            sets["val_clean"] = self._heldout_clean
        for name, pairs in self.extra_pairs.items():  # clean answers
            sets[name] = self.encode(pairs[:, 0], pairs[:, 1])
        return sets

    def confirm_sets(self, stop_metric: str) -> dict[str, np.ndarray]:
        if stop_metric not in self.confirmed or not self.confirm_pairs:
            return {}
        if not hasattr(self, "_confirm_rows"):  # encoded once, on first use
            self._confirm_rows = {name: self.encode(p[:, 0], p[:, 1]) for name, p in self.confirm_pairs.items()}
        return self._confirm_rows

    def exact_law(self) -> tuple[np.ndarray, np.ndarray]:
        """Every allowed pair but the excluded ones, weighted by mu; every answer string under noise."""
        lo, hi = self.law.lo, self.law.hi
        if (hi - lo + 1).prod() > 10**6:
            raise ValueError("exact_law enumerates at most 10^6 operand pairs")
        a, b = (g.ravel() for g in np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij"))
        keep = ~self._excluded_rows(np.stack([a, b], 1))
        a, b = a[keep], b[keep]
        p = self.law.mass(a, b)
        rows, p = self.encode(a, b), p / p.sum()  # (N, T), (N,)
        eps = self.label_noise
        if eps == 0:
            return rows, p
        k = self.seq_len - self.answer_start - 1
        K = 10**k
        out = np.repeat(rows, K, axis=0)  # (N K, T)
        wrong = np.tile(np.arange(K), len(rows))
        answers = digits(wrong, k)
        out[:, self.answer_start : self.answer_start + k] = answers[:, ::-1] if self.reverse_answer else answers
        right = (out == np.repeat(rows, K, axis=0)).all(1)
        return out, np.repeat(p, K) * np.where(right, 1 - eps, eps / (K - 1))
