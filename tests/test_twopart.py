import math

import numpy as np
import pytest
import torch

from lab.loggers import read_metrics
from lab.run import train
from lab.twopart import LADDER, data_bits, decode_weights, dequantize, encode_weights, quantize, two_part


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_modular):
    return train(tiny_modular(tmp_path_factory.mktemp("tp"), "train.max_steps=60", "train.lr=3e-3"))


def test_a_decoder_recovers_the_quantized_weights_from_the_counted_bits(trained):
    model = trained.module.model
    state = model.state_dict()
    ints, steps = quantize(state, 0.25)
    code = encode_weights(ints, steps)
    shapes = {k: tuple(v.shape) for k, v in state.items()}  # what the receiver knows: the architecture
    back_ints, back_steps = decode_weights(code, shapes)
    assert back_steps == steps and all(np.array_equal(back_ints[k], ints[k]) for k in ints)
    weights = dequantize(back_ints, back_steps)
    assert all(torch.equal(weights[k], v) for k, v in dequantize(ints, steps).items())
    # an entropy code: at least the integers' empirical entropy (plus headers), far below 32 bits a weight
    entropy = 0.0
    for q in ints.values():
        p = np.unique(q, return_counts=True)[1] / q.size
        entropy += -q.size * float((p * np.log2(p)).sum())
    n = sum(q.size for q in ints.values())
    assert entropy < 32 * len(code) < 8 * n


def test_two_part_picks_the_coarsest_scale_within_the_tolerance(trained):
    task, model = trained.module.task, trained.module.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tol = 0.05
    out = two_part(model, task, tol)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    x = torch.from_numpy(task.eval_sets()["train"])
    base = data_bits(model.eval(), task, x)
    assert out["dl/data_given_model"] <= base + tol * len(x)
    coarser = [s for s in LADDER if s > out["dl/model_scale"]]
    for scale in coarser:  # every coarser scale breaks the tolerance
        ints, steps = quantize(model.state_dict(), scale)
        model.load_state_dict(dequantize(ints, steps))
        assert data_bits(model, task, x) > base + tol * len(x)
        model.load_state_dict(before)
    ints, steps = quantize(before, out["dl/model_scale"])
    assert out["dl/model"] == 32 * len(encode_weights(ints, steps))


def test_table_runs_log_the_two_part_code_at_each_evaluation(trained):
    rows = [r for r in read_metrics(trained.run_dir / "metrics.jsonl") if "dl/two_part" in r]
    assert len(rows) == 6 and all(math.isfinite(r["dl/model"]) and r["dl/model"] > 0 for r in rows)
    assert "dl/two_part" in trained.summary


@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_the_data_part_codes_what_the_stream_sends(tmp_path, tiny_addition, loss_on):
    """dl/data_given_model codes the tokens the stream sends, as the stream sends them: the model's
    positions under the model, the operands under the task's law when the model is not trained on them
    (it once coded every sent position with the model)."""
    from lab.build import build

    b = build(tiny_addition(tmp_path, f"task.loss_on={loss_on}"))
    task, model = b.task, b.module.model.eval()
    x = task.train_batch(0, 64).x  # (64, T)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.from_numpy(x[:, :-1])).double(), -1).numpy()  # (64, T-1, V)
    want = 0.0
    for t in range(task.seq_len - 1):
        if task.known[t + 1]:
            continue  # free
        p = np.exp(logp[:, t]) if task.loss_mask[t] else task.law_probs(x, t)  # (64, V)
        want -= np.log2(p[np.arange(len(x)), x[:, t + 1]]).sum()
    assert data_bits(model, task, torch.from_numpy(x)) == pytest.approx(want, rel=1e-12)
