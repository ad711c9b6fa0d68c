"""The LightningModule: loss, optimizer and schedule, and held-out evaluation.

`training_step` returns the loss and the detached per-token loss (B, T-1) in nats, computed in float64
from the logits the optimizer is about to learn from: the bits callback turns it into code length.

Evaluation (every `train.eval_every` steps) on each of the task's evaluation sets ("val", and "train"
for finite tasks): teacher-forced loss per position, exact match by greedy generation of the whole
answer, and accuracy per answer position (of the generated answer).
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from lab.config import Config, to_dict
from lab.loggers import log_metrics
from lab.model import GPT, GPTConfig
from lab.tasks import Task

LN2 = math.log(2.0)


def token_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log q(target) in nats, float64: logits (B, T, V), targets (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.detach().double(), dim=-1)  # (B, T, V)
    return -logp.gather(-1, targets[..., None]).squeeze(-1)


def lr_factor(step: int, warmup: int, schedule: str, decay_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then constant or cosine down to `min_ratio` at `decay_steps` (flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LabModule(L.LightningModule):
    def __init__(self, cfg: Config, task: Task):
        super().__init__()
        self.cfg, self.task = cfg, task
        m = cfg.model
        parts = set(m.positions)
        self.model = GPT(GPTConfig.from_preset(
            m.preset, vocab_size=task.vocab_size, block_size=task.block_size, n_layer=m.n_layer,
            n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout, bias=m.bias,
            coupled_ids=tuple(task.coupled_ids.tolist()) if {"coupled", "rotary"} & parts else None,
            absolute="absolute" in parts, coupled="coupled" in parts, rotary="rotary" in parts,
        ))
        self.register_buffer("loss_mask", torch.from_numpy(task.loss_mask), persistent=False)  # (T-1,)
        coded = torch.from_numpy(task.loss_mask.nonzero()[0])
        self.register_buffer("coded_idx", coded, persistent=False)  # (M,) coded positions: no host sync
        self.examples_seen = 0
        self.eval_names = list(task.eval_sets())
        self._eval: dict[str, dict[str, torch.Tensor]] = {}
        self.last_eval: dict[str, float] = {}  # the latest evaluation's metrics, float64
        self.per_token_loss = True  # return the float64 per-token loss (the bits callback needs it)
        self.grad_ema: dict[str, torch.Tensor] = {}  # Grokfast's slow gradient, when enabled

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    # -- training -------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T) rows -> (mean cross-entropy over the coded positions, logits (B, T-1, V))."""
        logits = self.model(x[:, :-1])  # (B, T-1, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # (B, T-1)
        return nll.index_select(1, self.coded_idx).mean(), logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        x = batch["x"]  # (B, T)
        loss, logits = self.loss(x)
        self.examples_seen += int(batch["n_global"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("examples_seen", float(self.examples_seen))
        if not self.per_token_loss:
            return {"loss": loss}
        return {"loss": loss, "token_loss": token_nats(logits, x[:, 1:])}

    def on_before_optimizer_step(self, optimizer) -> None:
        """Grokfast-EMA (Lee et al. 2024): amplify the slow component of the gradient,
        g <- g + lambda * ema(g), ema <- alpha * ema + (1 - alpha) * g."""
        lam, alpha = self.cfg.train.grokfast_lambda, self.cfg.train.grokfast_alpha
        if lam <= 0:
            return
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.detach()
            if name in self.grad_ema:
                self.grad_ema[name].mul_(alpha).add_(g, alpha=1 - alpha)
            else:
                self.grad_ema[name] = g.clone()
            p.grad.add_(self.grad_ema[name], alpha=lam)

    def configure_optimizers(self):
        tr = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": tr.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},  # biases, LayerNorm
        ]
        opt = torch.optim.AdamW(groups, lr=tr.lr, betas=tuple(tr.betas))
        decay = tr.decay_steps or tr.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, tr.warmup_steps, tr.schedule, decay, tr.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval = {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        (x,) = batch  # (B, T)
        a = self.task.answer_start
        logits, answer = self.model.score_and_generate(x, a)  # (B, T-1, V), (B, A)
        nats = token_nats(logits, x[:, 1:])  # (B, T-1) float64
        correct = answer == x[:, a:]  # (B, A) greedy generation against the truth
        s = self._eval.setdefault(self.eval_names[dataloader_idx], {})
        for key, value in (
            ("n", torch.tensor(float(len(x)), device=x.device, dtype=torch.float64)),
            ("nats", nats.sum(0)),  # (T-1,)
            ("correct", correct.double().sum(0)),  # (A,)
            ("exact", correct.all(1).double().sum()),
        ):
            s[key] = s[key] + value if key in s else value
        return {"example_bits": (nats * self.loss_mask).sum(1) / LN2}  # (B,) coded bits per example

    def on_validation_epoch_end(self) -> None:
        names, mask, floor = self.task.target_names, self.task.loss_mask, self.task.floor_bits
        metrics = {}
        for name, s in self._eval.items():
            s = {k: v.cpu().numpy() for k, v in s.items()}  # one transfer per evaluation
            nats = s["nats"] / s["n"]  # (T-1,) mean loss per position
            exact = float(s["exact"] / s["n"])
            if name == "val":
                metrics["val/loss"] = float(nats[mask].mean())
                metrics["val/exact_match"] = exact
                metrics["val/bits_example"] = float((nats[mask] / LN2).sum())
                metrics["val/excess_bits_example"] = float((nats / LN2 - floor)[mask].sum())
                metrics.update({f"val/loss/{names[t]}": float(nats[t]) for t in range(len(names)) if mask[t]})
                acc = s["correct"] / s["n"]
                metrics.update({f"val/acc/{names[t]}": float(acc[j])
                                for j, t in enumerate(self.task.answer_positions)})
            elif name == "val_clean":  # noisy labels: the held-out rows scored against the true rule
                metrics["val/clean_exact_match"] = exact
            else:
                metrics[f"{name}/eval_loss"] = float(nats[mask].mean())
                metrics[f"{name}/exact_match"] = exact
        metrics["examples_seen"] = float(self.examples_seen)
        log_metrics(self.trainer, metrics)  # float64 to the files; self.log below feeds the bar and report
        self.last_eval = metrics
        self.log_dict({k: v for k, v in metrics.items() if k != "val/exact_match"}, logger=False)
        if "val/exact_match" in metrics:
            self.log("val/exact_match", metrics["val/exact_match"], prog_bar=True, logger=False)
        target, stop_at = metrics.get(self.cfg.train.stop_metric), self.cfg.train.stop_at
        if stop_at is not None and target is not None and target >= stop_at:
            self.trainer.should_stop = True

    # -- checkpoint extras ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lab"] = {
            "examples_seen": self.examples_seen,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": to_dict(self.cfg),
            "grad_ema": {k: v.cpu() for k, v in self.grad_ema.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        lab = checkpoint["lab"]
        self.examples_seen = lab["examples_seen"]
        self.grad_ema = {k: v.to(self.device) for k, v in lab.get("grad_ema", {}).items()}
        torch.set_rng_state(lab["torch_rng"])
        if lab["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(lab["cuda_rng"])
