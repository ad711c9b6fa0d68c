import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from lab.tasks import Addition, Modular, Permutation
from lab.tasks.addition import longest_chain
from lab.tasks.base import noise_floor
from lab.tasks.modular import OPS
from lab.tasks.permutation import OPS as PERM_OPS
from lab.tasks.permutation import PERMS


def conditional_entropies(dist: dict[tuple, float]) -> np.ndarray:
    """Exact H(x_t | x_<t) in bits for t = 1..T-1 of a distribution {sequence: probability}."""
    T = len(next(iter(dist)))
    out = np.zeros(T - 1)
    for t in range(1, T):
        nxt: dict[tuple, Counter] = defaultdict(Counter)
        for seq, p in dist.items():
            nxt[seq[:t]][seq[t]] += p
        for counts in nxt.values():
            z = sum(counts.values())
            out[t - 1] += -sum(p * math.log2(p / z) for p in counts.values() if p > 0)
    return out


ADDITION_OPTIONS = list(itertools.product([False, True], [False, True], ["all", "answer"]))


@pytest.mark.parametrize("leading_zeros,reverse,loss_on", ADDITION_OPTIONS)
def test_addition_floor_is_exact_conditional_entropy(leading_zeros, reverse, loss_on):
    task = Addition.of(n_digits=2, leading_zeros=leading_zeros, reverse_answer=reverse, loss_on=loss_on,
                       n_heldout=0, n_chain=0)
    lo = 0 if leading_zeros else 10
    a, b = (g.ravel() for g in np.meshgrid(np.arange(lo, 100), np.arange(lo, 100)))
    rows = task.encode(a, b)
    dist = {tuple(r): 1 / len(rows) for r in rows.tolist()}
    assert len(dist) == len(rows)
    np.testing.assert_allclose(task.floor_bits, conditional_entropies(dist), atol=1e-9, rtol=0)
    expected = 4 * math.log2(10) if leading_zeros else 2 * (math.log2(9) + math.log2(10))
    assert task.floor_bits_per_example == pytest.approx(expected, abs=1e-12)  # whatever the loss is on
    assert task.plan.law_mask.sum() == (4 if loss_on == "answer" else 0)


@pytest.mark.parametrize("n,leading_zeros,heldout", [(1, False, 40), (2, False, 2000), (2, True, 3000)])
def test_addition_floor_and_law_exclude_the_heldout_pairs_exactly(n, leading_zeros, heldout):
    """The stream never yields a held-out pair: its operands are uniform over the other pairs. The floors
    are that law's conditional entropies and `law_probs` its conditionals, both by enumeration."""
    task = Addition.of(n_digits=n, leading_zeros=leading_zeros, loss_on="answer", n_heldout=heldout, n_chain=0)
    lo = 0 if leading_zeros else 10 ** (n - 1)
    held = {tuple(p) for p in task.heldout_pairs.tolist()}
    pairs = [(a, b) for a in range(lo, 10**n) for b in range(lo, 10**n) if (a, b) not in held]
    rows = task.encode(*np.array(pairs).T)
    dist = {tuple(r): 1 / len(rows) for r in rows.tolist()}
    H = conditional_entropies(dist)
    np.testing.assert_allclose(task.floor_bits, H, atol=1e-9, rtol=0)
    assert task.floor_bits_per_example == pytest.approx(math.log2(len(pairs)), abs=1e-9)
    uniform = 2 * math.log2(10 ** n - lo)
    assert uniform - task.floor_bits_per_example > 1e-3  # the exclusion matters here
    bits = task.law_bits(rows)  # (N, T-1): every example's operands cost log2 |pairs| bits
    np.testing.assert_allclose(bits.sum(1), math.log2(len(pairs)), atol=1e-9)
    for t in np.flatnonzero(task.plan.law_mask):  # the law's conditionals, row by row, by counting
        prefix = Counter(tuple(r[: t + 1]) for r in rows.tolist())
        nxt = Counter(tuple(r[: t + 2]) for r in rows.tolist())
        expected = np.array([nxt[tuple(r[: t + 2])] / prefix[tuple(r[: t + 1])] for r in rows.tolist()])
        p = task.law_probs(rows, t)[np.arange(len(rows)), rows[:, t + 1]]
        np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_addition_8_digit_floors_match_the_reference():
    expected = 2 * (math.log2(9) + 7 * math.log2(10))
    assert Addition.of(n_digits=8, n_heldout=10, n_chain=0).floor_bits_per_example == pytest.approx(expected, abs=1e-12)
    assert round(Addition.of(n_digits=8, n_heldout=10, n_chain=0).floor_bits_per_example, 2) == 52.85
    task = Addition.of(n_digits=8, leading_zeros=True, n_heldout=10, n_chain=0)
    assert task.floor_bits_per_example == pytest.approx(16 * math.log2(10), abs=1e-12)
    assert task.floor_bits_per_example / 28 * math.log(2) == pytest.approx(1.3158, abs=1e-4)
    assert (task.seq_len, task.vocab_size, int(task.loss_mask.sum())) == (29, 14, 28)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_modular_floor_is_exact_conditional_entropy(op, noise, loss_on):
    p = 7
    task = Modular.of(op=op, p=p, train_fraction=0.5, loss_on=loss_on, label_noise=noise)
    clean = task.table.copy()
    clean[:, -1] = task.clean_answers
    dist = {}
    for row in clean.tolist():  # every (x, y) equally likely; the answer noisy as the task defines
        for z in range(p):
            prob = (1 - noise) if z == row[-1] else noise / (p - 1)
            if prob > 0:
                dist[(*row[:-1], z)] = prob / len(clean)
    H = conditional_entropies(dist)
    # the question x o y = is known to the receiver (the scheduled row's layout): only z is sent
    assert task.known.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(task.floor_bits, [0.0, 0.0, 0.0, H[3]], atol=1e-9, rtol=0)
    assert H[1] > 0  # y is not predictable from x: its floor is 0 only because it is not sent
    assert task.loss_mask.tolist() == ([True] * 4 if loss_on == "all" else [False, False, False, True])
    assert task.floor_bits_per_example == pytest.approx(noise_floor(noise, p), abs=1e-12)


@pytest.mark.parametrize("leading_zeros,reverse", [(False, False), (True, True)])
def test_addition_encode_decode_round_trip(leading_zeros, reverse):
    task = Addition.of(n_digits=8, leading_zeros=leading_zeros, reverse_answer=reverse, n_heldout=10, n_chain=0)
    batch = task.train_batch(3, 64)
    a, b = task.operands(batch.x)
    np.testing.assert_array_equal(task.encode(a, b), batch.x)
    for row, ai, bi in zip(batch.x[:5], a, b):
        line = task.to_text(row)
        lhs, c = line.strip().split("=")
        assert lhs == f"{ai:08d}+{bi:08d}"
        assert int(c[::-1] if reverse else c) == ai + bi and len(c) == 9
        assert task.show(row).split()[0] == "s" and task.show(row).split()[-1] == "e"
    assert task.to_text(batch.x[0]).count("\n") == 1 and len(task.to_text(batch.x[0])) == 28


def test_addition_operand_law():
    plain = Addition.of(n_digits=3, n_heldout=0, n_chain=0).train_batch(0, 4000).x
    assert plain[:, 1].min() == 1 and plain[:, 5].min() == 1  # leading digits never 0
    zeros = Addition.of(n_digits=3, leading_zeros=True, n_heldout=0, n_chain=0).train_batch(0, 4000).x
    assert zeros[:, 1].min() == 0 and zeros[:, 5].min() == 0


def test_stream_is_a_function_of_seed_and_step():
    task = Addition.of(n_digits=8, n_heldout=100, seed=1, n_chain=0)
    x1, x2 = task.train_batch(7, 32), task.train_batch(7, 32)
    np.testing.assert_array_equal(x1.x, x2.x)
    assert not np.array_equal(task.train_batch(8, 32).x, x1.x)
    assert not np.array_equal(Addition.of(n_digits=8, n_heldout=100, seed=2, n_chain=0).train_batch(7, 32).x, x1.x)
    np.testing.assert_array_equal(x1.ids, 7 * 32 + np.arange(32))


def test_heldout_never_in_the_stream():
    task = Addition.of(n_digits=2, n_heldout=2000, n_chain=0)  # a quarter of all 8,100 pairs is held out
    held = {tuple(p) for p in task.heldout_pairs.tolist()}
    assert len(held) == 2000
    seen = set()
    for step in range(100):
        a, b = task.operands(task.train_batch(step, 256).x)
        pairs = set(zip(a.tolist(), b.tolist()))
        assert not pairs & held
        seen |= pairs
    assert len(seen) > 5000  # the stream still covers the rest of the pairs
    val = task.eval_sets()["val"]
    assert {tuple(p) for p in zip(*task.operands(val))} == held


def test_modular_split_and_epochs():
    task = Modular.of(op="x/y", p=11, train_fraction=0.3)
    n = 11 * 10
    assert task.table_size() == n and len(task.train_idx) == 33
    assert set(task.train_idx).isdisjoint(task.val_idx) and len(task.train_idx) + len(task.val_idx) == n
    assert (task.table[:, 2] != 0).all()
    x, y, z = task.table[:, 0], task.table[:, 2], task.table[:, 4]
    np.testing.assert_array_equal((z * y) % 11, x)
    spe = task.steps_per_epoch(8)
    epoch0 = [task.train_batch(s, 8) for s in range(spe)]
    ids = np.concatenate([b.ids for b in epoch0])
    assert sorted(ids.tolist()) == sorted(task.train_idx.tolist())
    assert all(b.new.all() for b in epoch0)
    assert not task.train_batch(spe, 8).new.any()


def test_label_noise_is_fixed_per_example_and_never_right():
    task = Modular.of(op="x+y", p=97, train_fraction=0.5, label_noise=0.1)
    flipped = task.table[:, -1] != task.clean_answers
    assert abs(flipped.mean() - 0.1) < 0.02
    again = Modular.of(op="x+y", p=97, train_fraction=0.5, label_noise=0.1)
    np.testing.assert_array_equal(again.table, task.table)


@pytest.mark.parametrize("leading_zeros,reverse", [(False, False), (True, True), (False, True)])
def test_addition_label_noise_floor_is_exact(leading_zeros, reverse):
    eps = 0.1
    task = Addition.of(n_digits=1, leading_zeros=leading_zeros, reverse_answer=reverse, loss_on="all", n_heldout=0,
                       label_noise=eps, n_chain=0)
    lo = 0 if leading_zeros else 1
    dist = {}
    for a in range(lo, 10):
        for b in range(lo, 10):
            clean = task.encode([a], [b])[0]
            for wrong in range(100):  # every 2-digit answer string, with its probability
                row = clean.copy()
                digits = [wrong // 10, wrong % 10]
                row[task.answer_start : task.answer_start + 2] = digits[::-1] if reverse else digits
                right = (row == clean).all()
                dist[tuple(row)] = ((1 - eps) if right else eps / 99) / (10 - lo) ** 2
    np.testing.assert_allclose(task.floor_bits, conditional_entropies(dist), atol=1e-9, rtol=0)
    answer = task.floor_bits[task.answer_start - 1 :].sum()
    assert answer == pytest.approx(-eps * math.log2(eps) - (1 - eps) * math.log2(1 - eps) + eps * math.log2(99))


def test_addition_label_noise_in_the_stream_and_held_out():
    task = Addition.of(n_digits=8, n_heldout=2000, label_noise=0.1, n_chain=0)
    x = np.concatenate([task.train_batch(s, 512).x for s in range(4)])
    a, b = task.operands(x)
    flipped = (task.encode(a, b) != x).any(1)
    assert abs(flipped.mean() - 0.1) < 0.03
    np.testing.assert_array_equal(x[:, :19], task.encode(a, b)[:, :19])  # operands untouched
    sets = task.eval_sets()
    assert set(sets) == {"val", "val_clean"}
    assert 0.05 < (sets["val"] != sets["val_clean"]).any(1).mean() < 0.15
    clean = Addition.of(n_digits=8, n_heldout=2000, n_chain=0)
    np.testing.assert_array_equal(clean.eval_sets()["val"], sets["val_clean"])


@pytest.mark.parametrize("op", list(PERM_OPS))
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_permutation_tasks(op, noise):
    task = Permutation.of(op=op, train_fraction=0.3, loss_on="all", label_noise=noise)
    assert task.table_size() == 14400 and task.vocab_size == 122
    x, y = PERMS[task.table[:, 0]], PERMS[task.table[:, 2]]
    z = PERMS[task.clean_answers]
    for i in range(0, 14400, 997):  # composition as functions: (x*y)(k) = x(y(k))
        xi, yi = x[i], y[i]
        xy = [xi[yi[k]] for k in range(5)]
        inv = [int(np.argwhere(xi == k)[0, 0]) for k in range(5)]
        expected = {"x*y": xy, "x*y*x^-1": [xy[inv[k]] for k in range(5)], "x*y*x": [xy[xi[k]] for k in range(5)]}[op]
        assert z[i].tolist() == expected
    # the floor by enumeration over all 14,400 rows: the question is known, the answer noisy as defined
    probs = np.full((len(task.table), 120), noise / 119)  # (N, 120) law of z given each row's question
    probs[np.arange(len(task.table)), task.clean_answers] = 1 - noise
    H = -(probs * np.log2(np.where(probs > 0, probs, 1))).sum(1).mean()
    assert task.known.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(task.floor_bits, [0.0, 0.0, 0.0, H], atol=1e-9)  # every position
    if noise:
        assert task.floor_bits[3] == pytest.approx(noise_floor(noise, 120))


@pytest.mark.parametrize("reverse", [False, True])
def test_addition_coupled_ids_align_equal_significance(reverse):
    """The input position that predicts c_i carries the id of the positions that hold a_i and b_i."""
    t = Addition.of(n_digits=4, reverse_answer=reverse, n_chain=0)
    ids, names = t.coupled_ids, t.target_names  # input position j reads x[j] and predicts names[j]
    assert ids.shape == (t.block_size,) and ids[0] == 0
    holds = {names[j - 1]: ids[j] for j in range(1, t.block_size)}  # the token x[j] is target j - 1
    for i in range(4):
        assert holds[f"a{i}"] == holds[f"b{i}"] == i + 1
        predicting = [j for j in range(t.block_size) if names[j] == f"c{i}"]
        assert ids[predicting].tolist() == [i + 1]
    assert ids[names.index("c4")] == 5  # the carry out has its own id
    assert ids[names.index("e")] == holds["+"] == 0  # predicting the end, reading '+': no significance


@pytest.mark.parametrize("task", [
    Addition.of(n_digits=3, n_heldout=200, n_chain=0),
    Addition.of(n_digits=2, leading_zeros=True, reverse_answer=True, loss_on="answer", n_heldout=100, label_noise=0.1,
                n_chain=0),
    Modular.of(op="x/y", p=11, train_fraction=0.3, loss_on="all"),
    Modular.of(op="x+y", p=7, train_fraction=0.5, label_noise=0.2), Permutation.of(op="x*y*x", train_fraction=0.3),
], ids=lambda t: type(t).__name__)
def test_what_the_receiver_knows_is_what_the_stream_holds(task):
    """`layout` gives every known token of each scheduled example, the first token (never predicted) is
    known, known positions cost nothing, sent ones at most their uniform code, and `sent_ids` are the
    ids the schedule marks new, in order."""
    assert task.known[0] and task.plan.sent_mask.any()
    assert (task.floor_bits[~task.plan.sent_mask] == 0).all()
    assert (task.floor_bits[task.plan.sent_mask] <= task.uniform_bits[task.plan.sent_mask] + 1e-12).all()
    new_ids = []
    for step in range(5):
        batch = task.train_batch(step, 16)
        np.testing.assert_array_equal(task.known_tokens(batch.ids)[:, task.known], batch.x[:, task.known])
        new_ids.append(batch.ids[batch.new])
    np.testing.assert_array_equal(task.sent_ids(5, 16), np.concatenate(new_ids))


def test_carry_chain_sets_cover_every_length_and_stay_out_of_the_stream():
    task = Addition.of(n_digits=4, n_heldout=300, n_chain=150, seed=3)
    sets = task.eval_sets()
    assert [k for k in sets if k.startswith("chain_")] == [f"chain_{k}" for k in range(4)]  # lengths 0..n-1
    seen_pairs = set()
    for k in range(4):
        x = sets[f"chain_{k}"]
        a, b = task.operands(x)
        assert len(x) == 150 and (longest_chain(a, b, 4) == k).all()  # each length equally represented
        np.testing.assert_array_equal(x, task.encode(a, b))  # the task's own encoder, true sums
        assert ((a >= 1000) & (b >= 1000)).all()
        pairs = set(zip(a.tolist(), b.tolist()))
        assert len(pairs) == 150 and not pairs & seen_pairs
        seen_pairs |= pairs
    assert not seen_pairs & {tuple(p) for p in task.heldout_pairs.tolist()}
    for step in range(200):  # the stream never yields them
        a, b = task.operands(task.train_batch(step, 256).x)
        assert not set(zip(a.tolist(), b.tolist())) & seen_pairs


def test_confirmation_sums_are_new_sums_of_each_length_kept_out_of_the_stream():
    task = Addition.of(n_digits=4, n_heldout=300, n_chain=50, n_chain_confirm=100, seed=3)
    plain = Addition.of(n_digits=4, n_heldout=300, n_chain=50, seed=3)
    for name, x in plain.eval_sets().items():  # the regular sets are those of a task without them
        np.testing.assert_array_equal(task.eval_sets()[name], x)
    confirm = task.confirm_sets("val/rule")
    assert list(confirm) == [f"chain_{k}" for k in range(4)]
    assert task.confirm_sets("val/exact_match") == {} and plain.confirm_sets("val/rule") == {}
    regular = {tuple(p) for x in task.eval_sets().values() for p in zip(*map(np.ndarray.tolist, task.operands(x)))}
    seen = set()
    for k, x in enumerate(confirm.values()):
        a, b = task.operands(x)
        assert len(x) == 100 and (longest_chain(a, b, 4) == k).all()
        np.testing.assert_array_equal(x, task.encode(a, b))
        pairs = set(zip(a.tolist(), b.tolist()))
        assert len(pairs) == 100 and not pairs & seen and not pairs & regular
        seen |= pairs
    for step in range(200):  # the stream never yields them
        a, b = task.operands(task.train_batch(step, 256).x)
        assert not set(zip(a.tolist(), b.tolist())) & seen


def test_floors_exclude_the_chain_sets_too():
    task = Addition.of(n_digits=2, n_heldout=1000, n_chain=300, n_chain_confirm=100)
    excluded = {tuple(p) for p in task.heldout_pairs.tolist()}
    for pairs in [*task.chain_pairs.values(), *task.confirm_pairs.values()]:  # and the confirmation sums
        excluded |= {tuple(p) for p in pairs.tolist()}
    assert len(excluded) == 1000 + sum(len(p) for p in [*task.chain_pairs.values(), *task.confirm_pairs.values()])
    assert len(excluded) > 1300 and sum(map(len, task.confirm_pairs.values())) > 100
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if (a, b) not in excluded]
    rows = task.encode(*np.array(pairs).T)
    H = conditional_entropies({tuple(r): 1 / len(rows) for r in rows.tolist()})
    np.testing.assert_allclose(task.floor_bits, H, atol=1e-9, rtol=0)


@pytest.mark.parametrize("leading_zeros,lead,heldout", [(False, 0.0, 800), (True, 0.0, 800), (False, 0.6, 800),
                                                        (True, 0.6, 800), (False, 0.6, 5)])
def test_chain_rich_law_floors_and_conditionals_are_exact_by_enumeration(leading_zeros, lead, heldout):
    """chain_prob q: each lower pair sums to 9 w.p. q; chain_prob_lead q': the leading pair w.p. q' where
    9 - a is a leading digit. With held-out and chain sets excluded, the floors are the exact conditional
    entropies of the stream's law and law_probs its conditionals; with 5 held out most first operands have
    nothing excluded below them, so the floor of b's leading digit comes from mu's law per a_1 (a_1 = 9:
    uniform), not from the tables."""
    q = 0.5
    task = Addition.of(n_digits=2, leading_zeros=leading_zeros, loss_on="answer", n_heldout=heldout,
                       n_chain=150 if heldout > 5 else 0, chain_prob=q, chain_prob_lead=lead)
    lo = 0 if leading_zeros else 10
    excluded = {tuple(p) for p in task.heldout_pairs.tolist()}
    for pairs in task.chain_pairs.values():
        excluded |= {tuple(p) for p in pairs.tolist()}
    m = 100 - lo
    dist = {}
    for a in range(lo, 100):
        for b in range(lo, 100):
            if (a, b) in excluded:
                continue
            tie = (b % 10) == 9 - (a % 10)
            lead_tie, can = b // 10 == 9 - a // 10, 9 - a // 10 >= lo // 10  # (b1 = 0 is no leading digit)
            b1 = (lead * lead_tie + (1 - lead) / (m // 10)) if can else 1 / (m // 10)
            dist[(a, b)] = (q * tie + (1 - q) / 10) * b1 / m  # a uniform, b1 | a1, b0 | a0
    total = sum(dist.values())
    rows = task.encode(*np.array(list(dist)).T)
    H = conditional_entropies({tuple(r): v / total for r, v in zip(rows.tolist(), dist.values())})
    np.testing.assert_allclose(task.floor_bits, H, atol=1e-9, rtol=0)
    assert task.floor_bits[task.digit_cols[-1] - 1] < math.log2(10) - 0.5  # b0 is far from uniform
    probs = np.array(list(dist.values())) / total
    for t in np.flatnonzero(task.plan.law_mask):  # the conditionals, weighted by the law
        prefix, nxt = defaultdict(float), defaultdict(float)
        for r, p in zip(rows.tolist(), probs):
            prefix[tuple(r[: t + 1])] += p
            nxt[tuple(r[: t + 2])] += p
        expected = np.array([nxt[tuple(r[: t + 2])] / prefix[tuple(r[: t + 1])] for r in rows.tolist()])
        np.testing.assert_allclose(task.law_probs(rows, t)[np.arange(len(rows)), rows[:, t + 1]], expected,
                                   rtol=1e-9)
    a, b = task.operands(np.concatenate([task.train_batch(s, 512).x for s in range(20)]))
    pairs = np.array(list(dist))  # the stream samples the law: ties below and at the leading pair
    for got, law in [(a % 10 + b % 10 == 9, pairs[:, 0] % 10 + pairs[:, 1] % 10 == 9),
                     (a // 10 + b // 10 == 9, pairs[:, 0] // 10 + pairs[:, 1] // 10 == 9)]:
        assert got.mean() == pytest.approx(probs @ law, abs=0.02)  # 10,240 draws: sd 0.005
    assert (a // 10 + b // 10 == 9).mean() > 0.5 if lead else (a // 10 + b // 10 == 9).mean() < 0.15
    held_a, held_b = task.operands(task.eval_sets()["val"])
    if heldout > 5:
        assert ((held_a % 10) + (held_b % 10) == 9).mean() == pytest.approx(0.1, abs=0.03)  # held-out: uniform
