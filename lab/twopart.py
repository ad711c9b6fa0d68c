"""A two-part code beside the prequential one (Blier & Ollivier 2018): send the weights, then the data
given the weights.

    dl/model            the weights, quantized and really entropy-coded (the bits of `encode_weights`)
    dl/data_given_model the training data's sent tokens under the quantized model
    dl/two_part         their sum: a code a receiver can decode, beside dl/table (prequential)

Quantization: every tensor on a uniform grid of step s * std(tensor), with one scale s for the whole
model taken from the ladder 2, 1, 1/2, ..., 2^-10: the coarsest at which the training data's bits per
example stay within `tol` bits of the unquantized model's (0.05 by default). If none does, the finest.
Code, per tensor, in one range-coded stream: the step (float32 as two 16-bit symbols), the smallest
integer and the number of distinct ones (16-bit symbols), the count of each integer value (uniform
over 0..numel), then the integers with their empirical distribution (constriction's categorical
model). The receiver knows the architecture (tensor names and shapes) from the shared config;
`decode_weights` rebuilds the quantized weights bit for bit from the code alone.

At each evaluation of a table task (`TwoPart`), the data is the train split (its answers).
"""

from __future__ import annotations

import math

import constriction
import lightning as L
import numpy as np
import torch

from lab.loggers import log_metrics
from lab.module import token_nats

LADDER = [2.0 ** -i for i in range(-1, 11)]  # 2, 1, 1/2, ..., 2^-10 standard deviations
OFFSET = 2**15  # integers are sent as 16-bit symbols, offset by this


def quantize(state: dict[str, torch.Tensor], scale: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Tensors -> (integers per tensor, step per tensor): step = scale * std (float32), q = round(w / step)."""
    ints, steps = {}, {}
    for name, w in state.items():
        w = w.detach().cpu().double().numpy()
        step = float(np.float32(scale * (w.std() if w.size > 1 and w.std() > 0 else max(abs(w).max(), 1e-8))))
        q = np.rint(w / step).astype(np.int64)
        if q.size and (q.min() < -OFFSET or q.max() >= OFFSET):
            raise ValueError(f"{name}: integers beyond 16 bits at scale {scale}")
        ints[name], steps[name] = q, step
    return ints, steps


def dequantize(ints: dict[str, np.ndarray], steps: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy((q * np.float32(steps[k])).astype(np.float32)) for k, q in ints.items()}


def _u16(values) -> tuple[np.ndarray, constriction.stream.model.Uniform]:
    return np.asarray(values, dtype=np.int32), constriction.stream.model.Uniform(2**16)


def encode_weights(ints: dict[str, np.ndarray], steps: dict[str, float]) -> np.ndarray:
    """The quantized weights as one range code (uint32 words); its length is dl/model."""
    enc = constriction.stream.queue.RangeEncoder()
    for name, q in ints.items():
        flat = q.ravel()
        bits = np.float32(steps[name]).view(np.uint32)
        lo = int(flat.min())
        values, counts = np.unique(flat - lo, return_counts=True)
        k = int(values[-1]) + 1  # integers lo .. lo + k - 1
        enc.encode(*_u16([bits >> 16, bits & 0xFFFF, lo + OFFSET, k - 1]))
        full = np.zeros(k, dtype=np.int64)
        full[values] = counts
        enc.encode(full.astype(np.int32), constriction.stream.model.Uniform(flat.size + 1))
        probs = full / flat.size
        enc.encode((flat - lo).astype(np.int32), constriction.stream.model.Categorical(probs, perfect=False))
    return enc.get_compressed()


def decode_weights(code: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray],
                                                                                 dict[str, float]]:
    """The receiver: the code and the architecture's tensor shapes -> (integers, steps), exactly."""
    dec = constriction.stream.queue.RangeDecoder(code)
    ints, steps = {}, {}
    u16 = constriction.stream.model.Uniform(2**16)
    for name, shape in shapes.items():
        size = math.prod(shape)
        hi, low, lo, k = (int(v) for v in dec.decode(u16, 4))
        steps[name] = float(np.uint32((hi << 16) | low).view(np.float32))
        lo, k = lo - OFFSET, k + 1
        counts = dec.decode(constriction.stream.model.Uniform(size + 1), k).astype(np.int64)
        flat = dec.decode(constriction.stream.model.Categorical(counts / size, perfect=False), size)
        ints[name] = (flat.astype(np.int64) + lo).reshape(shape)
    return ints, steps


class TwoPart(L.Callback):
    """At each evaluation of a table task: dl/model, dl/data_given_model and dl/two_part."""

    def __init__(self, task, tol: float = 0.05):
        self.task, self.tol = task, tol
        self.last: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.task.is_table or trainer.sanity_checking:
            return
        self.last = two_part(pl_module.model, self.task, self.tol)
        log_metrics(trainer, {**self.last, "examples_seen": float(pl_module.examples_seen)})


@torch.no_grad()
def data_bits(model, task, x: torch.Tensor) -> float:
    """Bits of the sent tokens of rows x (B, T), as the stream sends them (`Task.plan`): under `model`
    where the model sends them, under the task's exact law elsewhere; float64."""
    plan = task.plan
    nats = token_nats(model(x[:, :-1]), x[:, 1:])[:, torch.from_numpy(plan.model_mask).to(x.device)]  # (B, S_model)
    bits = float(nats.sum()) / math.log(2)
    return bits + float(task.law_bits(x.cpu().numpy()).sum()) if plan.law_mask.any() else bits


@torch.no_grad()
def coarsest(model, task, x: torch.Tensor, tol: float) -> tuple[float, dict, dict, float]:
    """The coarsest scale on the ladder whose bits on rows x stay within tol bits per row of the model's
    -> (scale, integers, steps, bits of x under the quantized model). The model is left as it was."""
    device = next(model.parameters()).device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    base = data_bits(model, task, x)
    try:
        for scale in LADDER:
            ints, steps = quantize(state, scale)
            model.load_state_dict({k: v.to(device) for k, v in dequantize(ints, steps).items()})
            bits = data_bits(model, task, x)
            if bits <= base + tol * len(x):
                break
    finally:
        model.load_state_dict(state)
        model.train(was_training)
    return scale, ints, steps, bits


def two_part(model, task, tol: float = 0.05) -> dict[str, float]:
    """The two-part code of the train split under `model` (left as it was)."""
    x = torch.from_numpy(task.eval_sets()["train"]).to(next(model.parameters()).device)  # (N, T)
    scale, ints, steps, bits = coarsest(model, task, x, tol)
    model_bits = 32 * len(encode_weights(ints, steps))
    return {"dl/model": float(model_bits), "dl/data_given_model": bits, "dl/two_part": model_bits + bits,
            "dl/model_scale": scale}
