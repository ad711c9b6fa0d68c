import pytest
import torch

from lab.model import GPT, PRESETS, GPTConfig


def test_shapes_and_presets():
    model = GPT(GPTConfig.from_preset("gpt-mini", vocab_size=14, block_size=28))
    assert (model.cfg.n_layer, model.cfg.n_head, model.cfg.n_embd) == PRESETS["gpt-mini"]
    assert 2.6e6 < model.num_params() < 2.8e6
    x = torch.randint(0, 14, (3, 28))
    assert model(x).shape == (3, 28, 14)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.randint(0, 14, (1, 29)))
    override = GPTConfig.from_preset("gpt-mini", vocab_size=14, block_size=28, n_layer=2)
    assert override.n_layer == 2 and override.n_embd == 192
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
