"""The LightningModule: loss, optimizer and schedule, the training step, and held-out evaluation.

`LabModule.step` is the one training step of the lab: `lab train` (through `training_step`, Lightning's
manual optimization), both sides of the coder (`lab.coder.Codec`) and the benchmark's raw loop call it,
so a receiver replays exactly what training did. It returns the loss and the detached per-token loss in
nats, float64, under the model *before* the step, as the receiver can compute it (no dropout), at the
target positions the bits callback reads (`task.plan.step_cols`: those the model sends, and the answer);
the callback turns it into code length; `training_step` adds, per row, whether every answer token was
its position's argmax (then greedy decoding produces the answer). Dropout masks are a pure function of
(seed, step), so a receiver (and a resumed run) draws the same ones.

Evaluation (every `train.eval_every` steps) on each of the task's evaluation sets: teacher-forced loss
per position, exact match by greedy generation of the whole answer, the share certified (answer under
1 bit) and accuracy per answer position (of the generated answer), a `Score` per set. "val" and "train"
(table tasks) are reported the same way for every task; the task turns its other sets into its own
metrics (`Task.eval_metrics`: clean labels, addition's carry chains and rule). Those are read for exact
match alone, which one teacher-forced pass decides: they are scored on the answer's positions and not
decoded (`_score`).
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lab.config import Config, to_dict
from lab.loggers import log_metrics
from lab.model import GPT, GPTConfig
from lab.optim import optimizer
from lab.tasks import Score, Task

LN2 = math.log(2.0)
WHOLE = ("val", "train")  # the evaluation sets scored on every position (the others on the answer alone)


def token_nats(logits: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """-log q(target) in nats, float64: logits (B, T, V), targets (B, T) -> (B, T); with `positions` (K,),
    only those columns -> (B, K) (the float64 softmax is the costly part: it runs on those alone)."""
    if positions is not None:
        logits, targets = logits.index_select(1, positions), targets.index_select(1, positions)  # (B, K, V), (B, K)
    logp = torch.log_softmax(logits.detach().double(), dim=-1)  # (B, K, V)
    return -logp.gather(-1, targets[..., None]).squeeze(-1)


def dropout_seed(seed: int, step: int) -> int:
    """The torch seed of step `step`'s dropout masks."""
    return (seed * 1_000_003 + step) % 2**63


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
        n_layer, n_head, n_embd = m.sizes
        self.model = GPT(GPTConfig(
            vocab_size=task.vocab_size, block_size=task.block_size, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, dropout=m.dropout, bias=m.bias, qk_norm=m.qk_norm,
            coupled_ids=tuple(task.coupled_ids.tolist()) if {"coupled", "rotary"} & parts else None,
            absolute="absolute" in parts, coupled="coupled" in parts, rotary="rotary" in parts,
        ))
        self.automatic_optimization = False  # `step` below is the whole step, shared with the coder
        plan = task.plan
        for name, value in (("model_mask", plan.model_mask), ("trained", plan.trained),
                            ("step_cols", plan.step_cols), ("answer", plan.answer)):  # on the device: no host sync
            self.register_buffer(name, torch.from_numpy(value), persistent=False)
        self.examples_seen = 0
        self.eval_names = list(task.eval_sets())
        self._eval: dict[str, dict[str, torch.Tensor]] = {}
        self.last_eval: dict[str, float] = {}  # the latest evaluation's metrics, float64
        self.per_token_loss = True  # return the float64 per-token loss (the bits callback needs it)
        self.grad_ema: dict[str, torch.Tensor] = {}  # Grokfast's slow gradient, when enabled

    # -- training -------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, n_global: int | None = None, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T) rows -> (loss, logits (B, T-1, V)). The loss is the mean cross-entropy over the trained
        positions of the whole global batch of `n_global` rows (default B), of which this process holds
        B: DDP averages gradients over `world` processes, so each contributes its sum * world / total
        (a process with no rows contributes zero, not NaN)."""
        logits = self.model(x[:, :-1])  # (B, T-1, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # (B, T-1)
        trained = nll.index_select(1, self.trained)  # (B, R)
        if world == 1 and n_global in (None, len(x)):  # one process (the same float ops as ever)
            return trained.mean(), logits
        return trained.sum() * (world / ((n_global or len(x)) * trained.shape[1])), logits

    def step(self, x: torch.Tensor, opt, sched, step: int, n_global: int | None = None, world: int = 1,
             backward=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The training step on rows x (B, T), optimizer step `step` (0-based): forward, backward, Grokfast,
        gradient clipping, optimizer and schedule. -> (detached loss, per-token nats (B, K) float64 under
        the model before the step at the target positions `plan.step_cols` (K,), and the logits (B, T-1, V) they
        come from (detached; the coder codes with them); both None when `per_token_loss` is off)."""
        dropout = self.model.cfg.dropout > 0
        if dropout:
            torch.manual_seed(dropout_seed(self.cfg.seed, step))
        self.model.train()
        loss, logits = self.loss(x, n_global, world)
        nats = bits_logits = None
        if self.per_token_loss:
            if dropout:  # code with the model a receiver can run: the same weights, no dropout
                self.model.eval()
                with torch.no_grad():
                    logits = self.model(x[:, :-1])
                self.model.train()
            bits_logits = logits.detach()
            nats = token_nats(bits_logits, x[:, 1:], self.step_cols)  # (B, K)
        opt.zero_grad(set_to_none=True)
        (backward or torch.Tensor.backward)(loss)
        self._grokfast()
        if self.cfg.train.grad_clip:  # over the optimizer's parameters, in its order (as Lightning clipped)
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        opt.step()
        sched.step()
        return loss.detach(), nats, bits_logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        x = batch["x"]  # (B, T) this process's rows of the global batch
        step = self.trainer.global_step
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step uses
        loss, nats, logits = self.step(x, self.optimizers(), self.lr_schedulers(), step, int(batch["n_global"]),
                                       self.trainer.world_size, self.manual_backward)
        self.examples_seen += int(batch["n_global"])
        self.log("train/loss", loss, prog_bar=True, logger=False)
        if (step + 1) % self.cfg.log.every == 0 or step + 1 >= self.trainer.max_steps:  # (and the last step)
            if self.trainer.world_size > 1:  # float64 rows with the exact examples_seen
                loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
            log_metrics(self.trainer, {"train/loss": float(loss), "examples_seen": float(self.examples_seen),
                                       "train/lr": lr})
        if nats is None:
            return {"loss": loss}
        # (B,) every answer token the argmax of the logits before the step: greedy decoding produces the answer
        right = (logits.index_select(1, self.answer).argmax(-1) == x[:, 1:].index_select(1, self.answer)).all(1)
        return {"loss": loss, "token_loss": nats, "answer_right": right}

    def _grokfast(self) -> None:
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
        opt = optimizer(self.model, tr)
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
        return {"example_bits": self._score(x, self.eval_names[dataloader_idx])}

    def _score(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        """Score rows x (B, T) of evaluation set `name` into its running counts -> (B,) model-coded bits, or
        None for the task's own sets. "val" and "train" are scored on every position and their answers
        generated greedily. The task's own sets are read for exact match alone, which one teacher-forced
        pass decides (greedy decoding produces a row's answer exactly when each answer token is its
        position's argmax): they are scored on the answer's positions (`GPT.forward`'s `first`: the last
        block runs there only) and not decoded."""
        a = self.task.answer_start
        whole = name in WHOLE
        if whole:
            logits, answer = self.model.score_and_generate(x, a)  # (B, T-1, V), (B, A)
            nats = token_nats(logits, x[:, 1:])  # (B, T-1) float64
        else:  # exact match alone, which the teacher-forced pass decides: nothing to decode
            logits = self.model(x[:, :-1], first=a - 1)  # (B, A, V) the answer's targets
            answer = logits.argmax(-1)  # (B, A) the argmax after each true prefix (all right: greedy's answer)
            nats = token_nats(logits, x[:, a:])  # (B, A) float64
        correct = answer == x[:, a:]  # (B, A) against the truth
        certified = nats[:, -correct.shape[1] :].sum(1) < LN2  # (B,) answer under 1 bit: greedy must produce it
        s = self._eval.setdefault(name, {})
        for key, value in (
            ("n", torch.tensor(float(len(x)), device=x.device, dtype=torch.float64)),
            ("nats", nats.sum(0)),  # (T-1,)
            ("correct", correct.double().sum(0)),  # (A,)
            ("exact", correct.all(1).double().sum()),
            ("certified", certified.double().sum()),
        ):
            s[key] = s[key] + value if key in s else value
        return (nats * self.model_mask).sum(1) / LN2 if whole else None  # (B,) model-coded bits per example

    def on_validation_epoch_end(self) -> None:
        tr = self.cfg.train
        metrics = self._metrics()
        target = metrics.get(tr.stop_metric)
        confirm = self.task.confirm_sets(tr.stop_metric) if tr.stop_at is not None and target is not None else {}
        if confirm:  # near the stop, the confirmation rows are pooled with the regular ones before it decides
            pooled = 0
            if self.task.confirm_due(metrics, tr.stop_metric, tr.stop_at):
                pooled, metrics = self._confirm(confirm)
                target = metrics.get(tr.stop_metric)
            metrics["val/confirmed"] = pooled / len(confirm)
        log_metrics(self.trainer, metrics)  # float64 to the files; self.log below feeds the bar and report
        self.last_eval = metrics
        self.log_dict({k: v for k, v in metrics.items() if k != "val/exact_match"}, logger=False)
        if "val/exact_match" in metrics:
            self.log("val/exact_match", metrics["val/exact_match"], prog_bar=True, logger=False)
        if tr.stop_at is not None and target is not None and target >= tr.stop_at:
            self.trainer.should_stop = True

    def _confirm(self, confirm: dict[str, np.ndarray]) -> tuple[int, dict[str, float]]:
        """Pool each set's confirmation rows with it, the set with the lowest exact match first (ties: the
        highest answer loss first), until the stop metric falls below `stop_at` -> (how many sets were pooled,
        the metrics then). The metrics a task confirms are minima over its sets (`Task.confirmed`): once one
        set fails, this evaluation cannot stop the run whatever the others say, so they are left as the
        regular rows scored them. A set fails as soon as its errors so far exceed what `stop_at` allows of
        all its rows (its exact match is then below `stop_at` whatever the rest say); it is left part-pooled
        (its exact match over the rows scored, lower still)."""
        tr, counts = self.cfg.train, self._eval  # (`_score` updates each set's counts in place)
        order = sorted(confirm, key=lambda name: (float(counts[name]["exact"] / counts[name]["n"]),
                                                  -float(counts[name]["nats"].sum() / counts[name]["n"])))
        for i, name in enumerate(order, 1):
            total = float(counts[name]["n"]) + len(confirm[name])  # regular and confirmation rows
            for x in torch.from_numpy(confirm[name]).to(self.device).split(tr.eval_batch_size):
                self._score(x, name)
                wrong = float(counts[name]["n"] - counts[name]["exact"])
                if (total - wrong) / total < tr.stop_at:
                    break  # failed: the rest of its rows cannot lift it to stop_at
            metrics = self._metrics()
            if metrics[tr.stop_metric] < tr.stop_at:
                return i, metrics
        return len(order), metrics

    def _metrics(self) -> dict[str, float]:
        """The evaluation's metrics from the running counts of every set scored so far."""
        scores = {}
        for name, s in self._eval.items():
            s = {k: v.cpu().numpy() for k, v in s.items()}  # one transfer per evaluation
            n = float(s["n"])
            scores[name] = Score(n, s["nats"] / n, float(s["exact"]) / n, float(s["certified"]) / n, s["correct"] / n)
        metrics = self.common_metrics(scores)
        metrics.update(self.task.eval_metrics(scores))
        metrics["examples_seen"] = float(self.examples_seen)
        return metrics

    def common_metrics(self, scores: dict[str, Score]) -> dict[str, float]:
        """The metrics every task has: of "val" (held-out) and, for a table task, of "train"."""
        task, mask, model_sent = self.task, self.task.loss_mask, self.task.plan.model_mask
        names = task.target_names
        out = {}
        if "val" in scores:
            v = scores["val"]
            bits = v.nats / LN2  # (T-1,)
            out.update({"val/loss": float(v.nats[mask].mean()), "val/exact_match": v.exact,
                        "val/certified_exact": v.certified,
                        "val/bits_example": float(bits[model_sent].sum()),  # what the model codes of a row
                        "val/excess_bits_example": float((bits - task.floor_bits)[model_sent].sum())})
            out.update({f"val/loss/{names[t]}": float(v.nats[t]) for t in range(len(names)) if mask[t]})
            out.update({f"val/acc/{names[t]}": float(v.acc[j]) for j, t in enumerate(task.plan.answer)})
        if "train" in scores:
            s = scores["train"]
            out.update({"train/eval_loss": float(s.nats[mask].mean()), "train/exact_match": s.exact,
                        "train/certified_exact": s.certified})
        return out

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
