"""The optimizer of a run: AdamW, or Muon for the blocks' weight matrices with AdamW for the rest.

    opt = optimizer(model, cfg.train)    # torch.optim.AdamW, or Joint(AdamW, torch.optim.Muon)

`train.optimizer=adamw`: AdamW over every parameter, weight decay on the matrices and embeddings
(`p.dim() >= 2`), none on biases and LayerNorm gains.
`train.optimizer=muon` (Jordan et al. 2024, the NanoGPT speedrun's optimizer): `torch.optim.Muon`
(momentum, then the update orthogonalised by Newton-Schulz iterations) for the 2-D weights inside the
transformer blocks (attention and MLP matrices), with Moonshot's RMS matching (`adjust_lr_fn=
"match_rms_adamw"`: an update's RMS is AdamW's, so AdamW's learning rate and weight decay carry over;
`train.muon_lr` sets its own); AdamW, as above, for the embeddings, the head, biases and gains.
Both follow the one schedule (`lab.module.lr_factor`), each from its own peak rate.
"""

from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr


class Muon(torch.optim.Muon):
    """`torch.optim.Muon`, with the Newton-Schulz iteration in float32 off CUDA. torch runs it in bfloat16,
    which a GPU multiplies fast and a CPU several times slower than float32: on 2 CPU cores the
    bfloat16 iteration took 40% of a training step of the addition default, float32 a few percent.
    On CUDA it is torch's own step."""

    @torch.no_grad()
    def step(self, closure=None):
        if any(p.is_cuda for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - mu)  # as torch's _single_tensor_muon, step for step
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Newton-Schulz's quintic iteration towards U V^T of g = U S V^T (torch's, in g's dtype):
    g (A, B) -> (A, B) with singular values near 1."""
    a, b, c = coefficients
    x = g.T if g.shape[0] > g.shape[1] else g  # (short, long)
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T  # (short, short)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.shape[0] > g.shape[1] else x


class Joint(torch.optim.Optimizer):
    """Optimizers stepped as one: Lightning counts one optimizer step per training step, a scheduler
    scales every group of all of them, a checkpoint holds all their states.

    `param_groups` and `state` are the inner optimizers' own (the same dicts, concatenated), so a
    scheduler's or Lightning's changes land in them."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        self.defaults: dict = {}

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, sd in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(sd)

    def __repr__(self) -> str:
        return f"Joint({', '.join(type(o).__name__ for o in self.optimizers)})"


def optimizer(model: torch.nn.Module, tr) -> torch.optim.Optimizer:
    """The optimizer `tr` (a `lab.config.TrainConfig`) names, over the model's trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in named if tr.optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
    ids = {id(p) for p in muon}
    rest = [p for _, p in named if id(p) not in ids]
    adamw = torch.optim.AdamW([
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": tr.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},  # biases, LayerNorm
    ], lr=tr.lr, betas=tuple(tr.betas))
    if not muon:
        return adamw
    return Joint(adamw, Muon(
        muon, lr=tr.lr if tr.muon_lr is None else tr.muon_lr, weight_decay=tr.weight_decay,
        momentum=tr.muon_momentum, ns_steps=tr.muon_ns_steps, adjust_lr_fn="match_rms_adamw"))
