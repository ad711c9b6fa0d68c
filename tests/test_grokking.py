import math

import numpy as np
import pytest

from lab.loggers import read_metrics
from lab.probes import fourier_basis, frequency_norms, key_frequencies, restricted_and_excluded
from lab.run import train
from lab.tasks.base import noise_floor


def test_fourier_basis_is_orthonormal():
    F = fourier_basis(13)
    np.testing.assert_allclose(F @ F.T, np.eye(13), atol=1e-12)


def test_fourier_finds_the_frequencies_of_a_constructed_embedding():
    p, d = 97, 64
    rng = np.random.default_rng(0)
    x = np.arange(p)
    emb = 0.01 * rng.normal(size=(p, d))
    for k, scale in ((5, 1.0), (17, 0.9), (41, 0.8)):
        w = 2 * math.pi * k / p
        emb += scale * (np.outer(np.cos(w * x), rng.normal(size=d)) + np.outer(np.sin(w * x), rng.normal(size=d)))
    norms = frequency_norms(emb)
    assert len(norms) == 49
    assert key_frequencies(norms) == [5, 17, 41]
    assert norms[5] > 10 * np.median(norms)


def test_restricted_and_excluded_losses_on_a_pure_fourier_circuit():
    p, keys = 23, [2, 7]
    x, y = (g.ravel() for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    phase = (x + y) % p
    z = np.arange(p)
    # logits of the Fourier algorithm: sum_k cos(w_k (x + y - z)), sharpened
    logits = 8 * sum(np.cos(2 * math.pi * k * (phase[:, None] - z[None, :]) / p) for k in keys)
    train_rows = np.arange(0, len(x), 3)
    restricted, excluded = restricted_and_excluded(logits, phase, phase, p, keys, train_rows)
    full = float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(x)), phase]))
    assert restricted == pytest.approx(full, rel=1e-9)  # the circuit lives in those directions
    assert excluded == pytest.approx(math.log(p), rel=1e-6)  # without them nothing is left


def test_grokking_run_logs_progress_measures_and_writes_the_figure(tmp_path, tiny_modular):
    result = train(tiny_modular(tmp_path, "train.max_steps=20"))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    last = [r for r in rows if "grok/weight_norm" in r][-1]
    parts = [k for k in last if k.startswith("grok/weight_norm/")]
    assert {"grok/weight_norm/wte", "grok/weight_norm/blocks.0", "grok/weight_norm/lm_head"} <= set(parts)
    assert last["grok/weight_norm"] == pytest.approx(math.sqrt(sum(last[k] ** 2 for k in parts)))
    assert 1 <= last["grok/key_freqs"] <= 8 and "grok/fourier/5" in last
    assert "grok/restricted_loss" in last and "grok/excluded_loss" in last
    assert (result.run_dir / "grokking.png").stat().st_size > 10_000
    assert set(result.summary["marks"]) == {"val_acc_0.9", "dl_half"}


def test_label_noise_raises_the_floor_and_nothing_beats_it(tmp_path, tiny_modular):
    """eps = 0.1 over p = 23 answers: floor H(0.1) + 0.1 log2 22 = 0.915 bits per answer. First-pass bits
    and held-out loss stay at or above it; the revisited training rows may fall below (memorised noise)."""
    p, eps = 23, 0.1
    result = train(tiny_modular(
        tmp_path, f"task.p={p}", f"task.label_noise={eps}", "task.train_fraction=0.5", "model.n_layer=2",
        "model.n_embd=96", "train.lr=3e-3", "train.weight_decay=0.3", "train.batch_size=64", "train.max_steps=300",
        "train.eval_every=25", "train.stop_at=null",
    ))
    floor = noise_floor(eps, p)
    assert floor == pytest.approx(0.4690 + 0.1 * math.log2(22), abs=1e-4)
    t = result.bits.totals()
    assert t["bits/floor"] == pytest.approx(t["bits/examples"] * floor)
    assert t["bits/epistemic"] > 0
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    val = [r["val/bits_example"] for r in rows if "val/bits_example" in r]
    assert min(val) > floor - 0.15  # 265 held-out rows: sampling noise of their mean is ~0.05 bit
    assert "val/clean_exact_match" in rows[-1]
    assert rows[-1]["dl/table_floor"] == pytest.approx(p * p * floor)


@pytest.mark.slow
def test_the_default_grokking_recipe_groks(tmp_path, root):
    """`make grokking`'s config reaches 99% validation accuracy (about a minute on 2 cores)."""
    from lab.config import load

    cfg = load(f"{root}/configs/grokking.yaml", [f"log.dir={tmp_path}", "log.name=g", "log.wandb=false",
                                                 "log.progress_bar=false", "train.max_steps=3000"])
    result = train(cfg)
    assert result.summary["val/exact_match"] >= 0.99
    marks = result.summary["marks"]
    assert marks["dl_half"] <= marks["val_acc_0.9"]  # the table's code collapses no later than accuracy jumps
    assert result.summary["dl/table"] < 0.5 * result.summary["dl/table_raw"]
