import pytest
import torch

from lab.config import ModelConfig
from lab.model import GPT, GPTConfig, KVCache


def test_shapes_and_presets():
    sizes = ModelConfig(preset="gpt-mini").sizes
    assert sizes == (6, 6, 192)
    model = GPT(GPTConfig(14, 28, *sizes))
    assert 2.6e6 < model.num_params() < 2.8e6  # the reference's gpt-mini
    x = torch.randint(0, 14, (3, 28))
    assert model(x).shape == (3, 28, 14)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 14, (1, 29)))
    assert ModelConfig(preset="gpt-mini", n_layer=2).sizes == (2, 6, 192)  # a field set overrides the preset
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=5, block_size=4, n_head=3, n_embd=8)


def test_generation_with_cache_equals_naive_greedy_decoding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=14, block_size=28, n_layer=2, n_head=2, n_embd=32)).eval()
    x = torch.randint(0, 14, (16, 29))
    a = 19
    logits, answer = model.score_and_generate(x, a)
    torch.testing.assert_close(logits, model(x[:, :-1]))
    seq = x[:, :a]
    with torch.no_grad():
        for _ in range(29 - a):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(answer, seq[:, a:])
    x[::2, a:] = seq[::2, a:]  # half the rows hold their greedy answer (not decoded again), half do not
    x[1, -1] = (seq[1, -1] + 1) % 14  # and one of them differs from it at its last token only
    x[1, a:-1] = seq[1, a:-1]
    logits, answer = model.score_and_generate(x, a)
    assert torch.equal(answer, seq[:, a:])
    assert torch.equal(answer[::2], x[::2, a:]) and not torch.equal(answer[1], x[1, a:])


def test_cpu_attention_equals_pytorch_sdpa():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=14, block_size=28, n_layer=1, n_head=2, n_embd=32)).eval()
    attn = model.blocks[0].attn
    x = torch.randn(4, 28, 32)
    q, k, v = (t.view(4, 28, 2, 16).transpose(1, 2) for t in attn.c_attn(x).split(32, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attn.c_proj(y.transpose(1, 2).reshape(4, 28, 32))
    torch.testing.assert_close(attn(x), expected)


def test_the_cuda_attention_path_gives_the_explicit_paths_logits(monkeypatch):
    """On CUDA the model takes scaled_dot_product_attention; forced on CPU, the whole default model
    (rotary and coupled positions, 8 heads) scores and greedily decodes as the explicit path does."""
    from lab.model import CausalSelfAttention
    from lab.tasks import Addition

    task = Addition.of(n_digits=8, n_heldout=0, n_chain=0)
    n_layer, _, n_embd = ModelConfig(preset="gpt-micro").sizes
    cfg = GPTConfig(vocab_size=14, block_size=28, n_layer=n_layer, n_head=8, n_embd=n_embd, absolute=True,
                    coupled=True, rotary=True, coupled_ids=tuple(task.coupled_ids.tolist()))
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    x = torch.from_numpy(task.train_batch(0, 64).x)
    sdpa, calls = torch.nn.functional.scaled_dot_product_attention, []
    counted = lambda *a, **k: calls.append(1) or sdpa(*a, **k)  # noqa: E731
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    out, used = {}, {}
    for fused in (False, True):
        monkeypatch.setattr(CausalSelfAttention, "fused", fused)
        calls.clear()
        with torch.no_grad():
            out[fused] = (model(x[:, :-1]), *model.score_and_generate(x, task.answer_start))
        used[fused] = len(calls)
    assert used[False] == 0 and used[True] > 0  # each path was the one taken
    for a, b in zip(out[False], out[True]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("absolute", [True, False])
def test_coupled_positions_share_one_embedding_and_decode_with_cache(absolute):
    from lab.tasks import Addition

    torch.manual_seed(0)
    ids = tuple(Addition.of(n_digits=3, n_chain=0).coupled_ids.tolist())
    cfg = GPTConfig(vocab_size=14, block_size=13, n_layer=2, n_head=2, n_embd=32, coupled_ids=ids,
                    absolute=absolute)
    model = GPT(cfg).eval()
    assert model.wce.num_embeddings == 3 + 2  # ids 0 (none), 1..n+1
    assert hasattr(model, "wpe") == absolute
    with torch.no_grad():  # the coupled table is used: changing one of its rows changes the output
        x = torch.randint(0, 10, (8, 14))
        before = model(x[:, :-1])
        model.wce.weight[1] += 1.0
        after = model(x[:, :-1])
    changed = (before - after).abs().amax(dim=(0, 2)) > 0  # (T,) positions whose logits moved
    first = [t for t in range(13) if ids[t] == 1][0]
    assert not changed[:first].any() and changed[first:].all()
    logits, answer = model.score_and_generate(x, 9)
    seq = x[:, :9]
    with torch.no_grad():
        for _ in range(14 - 9):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(answer, seq[:, 9:])
    with pytest.raises(ValueError, match="coupled_ids"):
        GPT(GPTConfig(vocab_size=14, block_size=12, coupled_ids=ids))
    with pytest.raises(ValueError, match="coupled_ids"):
        GPT(GPTConfig(vocab_size=14, block_size=13, absolute=False))


def test_rotary_scores_depend_on_the_difference_of_ids_only():
    """q at id i against k at id j scores the same as at ids i + s, j + s: a relative scheme."""
    from lab.model import CausalSelfAttention

    torch.manual_seed(0)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    model = GPT(GPTConfig(vocab_size=14, block_size=8, n_layer=1, n_head=2, n_embd=32, coupled_ids=tuple(ids.tolist()),
                          coupled=False, rotary=True))
    rope = (model.rotary_cos[:, 0, 0], model.rotary_sin[:, 0, 0])  # 2 x (8, 8): one row per id
    q, k = torch.randn(1, 1, 1, 16).expand(1, 1, 8, 16), torch.randn(1, 1, 1, 16).expand(1, 1, 8, 16)
    scores = CausalSelfAttention.rotate(q, rope) @ CausalSelfAttention.rotate(k, rope).transpose(-2, -1)  # (1,1,8,8)
    s = scores[0, 0]
    for shift in (1, 3):
        torch.testing.assert_close(s[shift:, shift:], s[:-shift, :-shift])
    assert not torch.allclose(s[0, 0], s[0, 1])  # but the difference matters
    torch.testing.assert_close(CausalSelfAttention.rotate(q, rope).norm(dim=-1), q.norm(dim=-1))  # a rotation
    assert not hasattr(model, "wce")
    x1, x2 = torch.randn(2, 64, 8, 3, 8).unbind(0)  # the rotation's textbook form, to the last bit
    cos, sin = (t[:, None] for t in rope)  # 2 x (8, 1, 8)
    x = torch.cat([x1, x2], -1)  # (64, 8, 3, 16): 8 ids, 3 heads
    assert torch.equal(CausalSelfAttention.rotate(x, (cos, sin)),
                       torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1))
    with pytest.raises(ValueError, match="rotary embeddings need coupled_ids"):
        GPT(GPTConfig(vocab_size=14, block_size=8, rotary=True))


@pytest.mark.parametrize("threads", [1, 2])
def test_row_cache_gives_the_whole_forwards_rows_bit_for_bit(threads, root):
    """What the coder rests on: decoding one position at a time with a RowCache (batches padded as the
    coder pads them) yields exactly the training forward's logits, for every config, at batches of 16 rows
    and more (each config's own too). A whole forward of fewer rows times T may take other kernels: on an
    Intel Xeon with AVX-512, 1 to 3 rows of a table task (4 to 12 token rows) come out 1e-9 apart. The
    coder then codes with the receiver's computation (`lab.coder.rows_agree`, tests/test_coder.py)."""
    import glob

    import numpy as np

    from lab.coder import Coding, distributions
    from lab.config import load
    from lab.module import LabModule
    from lab.tasks import make_task

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for path in sorted(glob.glob(f"{root}/configs/*.yaml")):
            cfg = load(path)
            task = make_task(cfg)
            model = LabModule(cfg, task).model
            for B in sorted({16, 64, cfg.train.batch_size} - {0}):  # and the config's own (0: the whole split)
                x = task.train_batch(0, B).x
                model.train(cfg.model.dropout == 0)  # (with dropout the coder's forward is the eval one)
                full = distributions(model(torch.from_numpy(x)[:, :-1]).detach())
                coding = Coding(model.eval(), task.block_size)
                rows = np.stack([coding.next(x[:, t]) for t in range(task.block_size)], axis=1)
                assert np.array_equal(rows, full), (path, B)
    finally:
        torch.set_num_threads(old)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    x = torch.randint(0, 14, (4, 28))
    outs = {}
    for qk_norm in (False, True):
        torch.manual_seed(1)
        model = GPT(GPTConfig(vocab_size=14, block_size=28, n_layer=1, n_head=2, n_embd=32, qk_norm=qk_norm)).eval()
        with torch.no_grad():
            before = model(x)
            w, b = model.blocks[0].attn.c_attn.weight, model.blocks[0].attn.c_attn.bias
            w[:64] *= 3.0  # queries and keys three times larger
            b[:64] *= 3.0
            outs[qk_norm] = (before, model(x))
    assert not torch.allclose(*outs[False], atol=1e-4)  # without the norm the scores change
    torch.testing.assert_close(*outs[True], atol=1e-5, rtol=1e-4)  # with it they do not


def test_the_default_models_scores_do_not_depend_on_the_evaluation_batch():
    """configs/addition.yaml scores 256 rows a batch (faster on CPU than 1,000): every row's logits and
    greedy answer are the same bit for bit in any batch, rows that need decoding and rows that do not."""
    from lab.build import build
    from lab.config import load

    b = build(load("configs/addition.yaml", ["task.n_heldout=0", "task.n_chain=0",
                                             "train.stop_metric=val/exact_match"]))
    model, a = b.module.model.eval(), b.task.answer_start
    torch.manual_seed(0)
    x = torch.from_numpy(b.task.train_batch(0, 600).x)  # (600, T)
    _, greedy = model.score_and_generate(x, a)
    x[::3, a:] = greedy[::3]  # a third of the rows hold their greedy answer: not decoded
    whole = model.score_and_generate(x, a)  # one batch of 600
    assert 0 < int((whole[1] == x[:, a:]).all(1).sum()) < 600  # both kinds of row are there
    for size in (256, 64):
        parts = [model.score_and_generate(xb, a) for xb in x.split(size)]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0]), size
        assert torch.equal(torch.cat([p[1] for p in parts]), whole[1]), size


def test_the_answer_alone_is_scored_as_the_whole_row_scores_it():
    """The task's own evaluation sets (addition's carry chains) are scored on the answer alone (`first`:
    the last block's queries, MLP and head at those positions only) and not decoded: the default model
    gives the answer's positions the same logits as the whole row's pass, bit for bit, and a row's greedy
    generation is its answer exactly when every answer token is the teacher-forced argmax."""
    from lab.build import build
    from lab.config import load

    b = build(load("configs/addition.yaml", ["task.n_heldout=0", "task.n_chain=0",
                                             "train.stop_metric=val/exact_match"]))
    model, a = b.module.model.eval(), b.task.answer_start
    x = torch.from_numpy(b.task.train_batch(0, 300).x)  # (300, T)
    _, greedy = model.score_and_generate(x, a)
    x[::3, a:] = greedy[::3]  # a third of the rows hold their greedy answer
    logits, answer = model.score_and_generate(x, a)  # (300, T-1, V), (300, A)
    with torch.no_grad():
        part = model(x[:, :-1], first=a - 1)  # (300, A, V)
        assert torch.equal(model(x[:, :-1], first=5), model(x[:, :-1])[:, 5:])
    assert part.shape == (300, x.shape[1] - a, b.task.vocab_size)
    assert torch.equal(part, logits[:, a - 1 :])
    generated = (answer == x[:, a:]).all(1)  # (300,)
    assert 0 < int(generated.sum()) < 300  # both kinds of row are there
    assert torch.equal((part.argmax(-1) == x[:, a:]).all(1), generated)
    with pytest.raises(ValueError, match="first"):
        model(x[:, :-1], first=x.shape[1] - 1)  # past the last position
    with pytest.raises(ValueError, match="first"):
        model(x[:, :-1], KVCache(), first=5)  # a cache takes whole rows or one token
