"""Progress measures, logged at each evaluation (Nanda et al. 2023, "Progress measures for grokking").

    grok/weight_norm              sqrt(sum of squared weights), and grok/weight_norm/<part> per part
                                  (wte, wpe, blocks.0, ..., ln_f, lm_head)
    for a table whose answer is a phase in Z_p (`TableTask.cyclic_phase`: a+b and a-b mod p):
    grok/fourier/<k>              norm of the residues' token embedding in frequency k (cos and sin
                                  together; k = 0 is the constant), k = 0..(p-1)/2
    grok/key_freqs, grok/key_freq_<i>  the frequencies whose embedding norm^2 exceeds 5x the median
                                  (at least 1, at most 8), largest first
    grok/restricted_loss          loss over the whole table of the answer logits projected onto the
                                  directions cos/sin(w_k (x +- y)) of the key frequencies (and the
                                  constant): what the Fourier circuit alone achieves
    grok/excluded_loss            loss over the train split with those directions removed: what
                                  memorisation alone achieves

Losses in nats, float64. w_k = 2 pi k / p.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch

from lab.loggers import log_metrics


def fourier_basis(p: int) -> np.ndarray:
    """(p, p) orthonormal rows over Z_p: constant, then cos(w_k x), sin(w_k x) for k = 1..(p-1)/2."""
    x = np.arange(p)
    rows = [np.full(p, 1 / math.sqrt(p))]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [np.cos(2 * math.pi * k * x / p), np.sin(2 * math.pi * k * x / p)]
    rows = [r / np.linalg.norm(r) for r in rows]
    return np.stack(rows)[:p]


def frequency_norms(embedding: np.ndarray) -> np.ndarray:
    """(p, d) embedding of the residues -> ((p-1)/2 + 1,) norm in each frequency (0 = constant)."""
    p = embedding.shape[0]
    coef = fourier_basis(p) @ embedding  # (p, d)
    K = (p - 1) // 2
    norms = [np.linalg.norm(coef[0])]
    norms += [math.hypot(np.linalg.norm(coef[2 * k - 1]), np.linalg.norm(coef[2 * k])) for k in range(1, K + 1)]
    return np.array(norms)


def key_frequencies(norms: np.ndarray, factor: float = 5.0, most: int = 8) -> list[int]:
    """The frequencies (k >= 1) whose norm^2 stands out: above `factor` x the median, largest first
    (at least the largest one, at most `most`)."""
    energy = norms[1:] ** 2
    order = np.argsort(-energy, kind="stable")
    n = int((energy > factor * np.median(energy)).sum())
    return [int(k) + 1 for k in order[: min(max(n, 1), most)]]


def restricted_and_excluded(logits: np.ndarray, phase: np.ndarray, answers: np.ndarray, p: int,
                            keys: list[int], train: np.ndarray) -> tuple[float, float]:
    """logits (N, p) over the whole table, phase (N,) = x +- y mod p, answers (N,), train (n,) row indices.

    Restricted: each logit column projected onto span{1, cos(w_k phase), sin(w_k phase) : k in keys},
    loss over all rows. Excluded: the key-frequency directions removed, loss over the train rows."""
    w = 2 * math.pi * np.array(keys) / p  # (K',)
    waves = np.concatenate([np.cos(phase[:, None] * w), np.sin(phase[:, None] * w)], axis=1)  # (N, 2K')
    q_keys, _ = np.linalg.qr(waves)  # (N, 2K')
    q_all, _ = np.linalg.qr(np.concatenate([np.ones((len(phase), 1)), waves], axis=1))  # (N, 2K'+1)
    restricted = q_all @ (q_all.T @ logits)  # (N, p)
    excluded = logits - q_keys @ (q_keys.T @ logits)  # (N, p)

    def loss(z: np.ndarray, rows: np.ndarray) -> float:
        z = torch.from_numpy(z[rows])
        return float(torch.nn.functional.cross_entropy(z, torch.from_numpy(answers[rows])))

    return loss(restricted, np.arange(len(phase))), loss(excluded, train)


class GrokkingProbes(L.Callback):
    """Weight norms for every task; the Fourier measures where the task names a cyclic phase."""

    def __init__(self, task):
        self.task = task
        self.cyclic = task.cyclic_phase() if task.is_table else None  # (p, (N,) phase per table row) or None
        self.fourier = self.cyclic is not None
        self.last: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        model = pl_module.model
        parts: dict[str, float] = {}
        for name, p in model.named_parameters():
            part = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
            parts[part] = parts.get(part, 0.0) + float(p.detach().double().pow(2).sum())
        metrics = {"grok/weight_norm": math.sqrt(sum(parts.values()))}
        metrics.update({f"grok/weight_norm/{k}": math.sqrt(v) for k, v in parts.items()})
        if self.fourier:
            metrics.update(self._fourier(pl_module))
        self.last = metrics
        log_metrics(trainer, {**metrics, "examples_seen": float(pl_module.examples_seen)})

    @torch.no_grad()
    def _fourier(self, pl_module) -> dict[str, float]:
        task, (p, phase) = self.task, self.cyclic
        emb = pl_module.model.wte.weight[:p].detach().double().cpu().numpy()  # (p, d)
        norms = frequency_norms(emb)
        keys = key_frequencies(norms)
        x = torch.from_numpy(task.table).to(pl_module.device)  # (N, 5)
        logits = pl_module.model(x[:, :-1])[:, task.answer_start - 1, :p].double().cpu().numpy()  # (N, p)
        restricted, excluded = restricted_and_excluded(logits, phase, task.table[:, -1], p, keys, task.train_idx)
        out = {f"grok/fourier/{k}": float(v) for k, v in enumerate(norms)}
        out.update({f"grok/key_freq_{i + 1}": float(k) for i, k in enumerate(keys)})
        out.update({"grok/key_freqs": float(len(keys)), "grok/restricted_loss": restricted,
                    "grok/excluded_loss": excluded})
        return out
