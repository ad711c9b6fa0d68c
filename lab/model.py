"""A minGPT-style decoder-only transformer: a plain nn.Module, no Lightning inside.

    model = GPT(GPTConfig(vocab_size=14, block_size=28, n_layer=6, n_head=6, n_embd=192))
    logits = model(idx)            # idx (B, T) int64 -> logits (B, T, V)

Pre-LayerNorm blocks, causal self-attention, a 4x GELU MLP, minGPT's initialisation (normal(0, 0.02),
residual projections scaled by 1/sqrt(2 n_layer)), and three position schemes, alone or together:
- learned absolute position embeddings (`absolute`, minGPT's and the reference's);
- `coupled_ids`, one id per position shared by the positions that handle digits of equal significance
  (the task supplies them; position coupling, Cho et al. 2024; Abacus embeddings, McLeish et al. 2024),
  used as a learned embedding added to the input (`coupled`) and/or as rotary embeddings of queries and
  keys (`rotary`, Su et al. 2021): then attention scores depend on the *difference* of significance,
  so "look at the digits one place lower" is one pattern for every digit, not one per position.
Vocabulary and block size always come from the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ROTARY_BASE = 100.0  # significance ids span 0..n+1: a small base puts more frequencies to use

@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    qk_norm: bool = False  # RMS-normalise queries and keys per head (learned gains), before rotary
    coupled_ids: tuple[int, ...] | None = None  # (block_size,) an id per input position; 0 = none
    absolute: bool = True  # learned absolute position embeddings
    coupled: bool = True  # with coupled_ids: a learned embedding per id, added to the input
    rotary: bool = False  # with coupled_ids: rotary embeddings of the ids on queries and keys (relative)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd: {self.n_embd} is not divisible by model.n_head={self.n_head}")


class KVCache:
    """Keys and values of earlier positions, for incremental decoding (greedy generation): feed the whole
    prompt once, then one token at a time; each new query attends to every cached key. A (1, d) x (d, t)
    product may round differently from the whole forward's row; `lab.rowcache.RowCache` is the cache
    that gives the whole forward's rows bit for bit (the coder's)."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values (B, h, t, d)

    def past(self, t: int) -> int:
        """Positions already cached, before feeding t more (the whole sequence first, then one at a time)."""
        past = self.layers[0][0].shape[2] if self.layers else 0
        if past and t != 1:
            raise ValueError("with a cache, feed the whole sequence or one token at a time")
        return past

    def attend(self, attn: CausalSelfAttention, layer: int, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, h, t, d) of the new positions -> their attention output (B, h, t, d)."""
        if len(self.layers) > layer:
            k = torch.cat([self.layers[layer][0], k], dim=2)  # (B, h, past + t, d)
            v = torch.cat([self.layers[layer][1], v], dim=2)
            self.layers[layer] = (k, v)
        else:
            self.layers.append((k, v))
        return attn._attend(q, k, v, causal=k.shape[2] == q.shape[2])  # one token after a past sees all

    def advance(self, t: int) -> None:
        pass  # (the cached keys say how far it is)

    def keep(self, n: int, rows: torch.Tensor | None = None) -> None:
        """Forget every position from n on (and every row but `rows`, (W,) indices)."""
        self.layers = [(k[:, :, :n], v[:, :, :n]) if rows is None else (k[rows, :, :n], v[rows, :, :n])
                       for k, v in self.layers]


class CausalSelfAttention(nn.Module):
    fused: bool | None = None  # scaled_dot_product_attention (True) or explicit (False); None: fused on CUDA

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:  # a gain per channel for queries and one for keys
            self.q_gain, self.k_gain = (nn.Parameter(torch.ones(cfg.n_embd // cfg.n_head)) for _ in range(2))

    @staticmethod
    def causal_mask(T: int, device: torch.device) -> torch.Tensor:
        return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)  # (T, T) True above the diagonal

    @staticmethod
    def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotary embedding: x (..., d) -> (..., d), with cos and sin of shape (..., d/2) broadcast to it."""
        cos, sin = rope
        x1, x2 = x.chunk(2, dim=-1)  # 2 x (..., d/2)
        # [x1 cos - x2 sin, x2 cos + x1 sin] as x [cos, cos] + [x2, x1] [-sin, sin]: the same floats (a
        # negation is exact, a sum commutes), in half the element-wise passes
        return x * torch.cat([cos, cos], -1) + torch.cat([x2, x1], -1) * torch.cat([-sin, sin], -1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, first: int = 0) -> torch.Tensor:
        """(B, h, t, d) queries, (B, h, s, d) keys and values -> (B, h, t, d). causal: the queries are the
        positions first..first+t-1 of the s keys' (all of them, first = 0, in the whole forward)."""
        p = self.dropout if self.training else 0.0
        fused = q.is_cuda if self.fused is None else self.fused
        mask = self.causal_mask(k.shape[2], q.device)[first : first + q.shape[2]] if causal else None  # (t, s)
        if fused:
            if first == 0 and q.shape[2] == k.shape[2]:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else ~mask, dropout_p=p)
        # on CPU, explicit attention is faster for short rows (in bf16, 3x the whole step)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, h, t, s)
        if causal:
            att = att.masked_fill(mask, float("-inf"))
        att = F.dropout(att.softmax(-1), p, self.training)
        return att @ v  # (B, h, t, d)

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0, rope=None, first: int = 0) -> torch.Tensor:
        """x (B, t, C) -> (B, t - first, C): the outputs of positions `first` on (keys and values come from
        every position; `first` only without a cache). With `cache` (`KVCache`, `lab.rowcache.RowCache`),
        the new positions attend through it to the cached earlier ones (`cache.attend`). `rope` (cos, sin),
        each (t, 1, 1, d/2), rotates queries and keys by the positions' ids."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, t, 3, h, d)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]  # (B, t, 2, h, d), (B, t, h, d)
        if hasattr(self, "q_gain"):  # RMS-normalised, in one op for both
            qk = F.rms_norm(qk, qk.shape[-1:]) * torch.stack([self.q_gain, self.k_gain])[:, None]  # (B, t, 2, h, d)
        if rope is not None:
            qk = self.rotate(qk, rope)  # queries and keys in one go
        q, k = qk.unbind(2)  # 2 x (B, t, h, d)
        if first:
            q = q[:, first:]  # (B, t - first, h, d) the queries of positions `first` on
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # (B, h, t - first, d), 2 x (B, h, t, d)
        y = self._attend(q, k, v, True, first) if cache is None else cache.attend(self, layer, q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T - first, C)  # (B, t - first, C)
        return self.resid_drop(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0, rope=None, first: int = 0) -> torch.Tensor:
        """x (B, t, C) -> (B, t - first, C): the block's outputs at positions `first` on."""
        x = (x[:, first:] if first else x) + self.attn(self.ln_1(x), cache, layer, rope, first)  # (B, t - first, C)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.absolute:
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.coupled_ids is None:
            raise ValueError("a model without absolute positions needs coupled_ids")
        if cfg.coupled_ids is not None:
            if len(cfg.coupled_ids) != cfg.block_size:
                raise ValueError(f"coupled_ids has {len(cfg.coupled_ids)} entries, block_size is {cfg.block_size}")
            if not (cfg.coupled or cfg.rotary):
                raise ValueError("coupled_ids given but neither coupled nor rotary uses them")
            self.register_buffer("coupled_ids", torch.tensor(cfg.coupled_ids), persistent=False)  # (T,)
            if cfg.coupled:
                self.wce = nn.Embedding(max(cfg.coupled_ids) + 1, cfg.n_embd)
            if cfg.rotary:
                d = cfg.n_embd // cfg.n_head
                freq = ROTARY_BASE ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
                angle = (self.coupled_ids[:, None] * freq)[:, None, None]  # (T, 1, 1, d/2)
                self.register_buffer("rotary_cos", angle.cos(), persistent=False)
                self.register_buffer("rotary_sin", angle.sin(), persistent=False)
        elif cfg.rotary:
            raise ValueError("rotary embeddings need coupled_ids")
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache=None, first: int = 0) -> torch.Tensor:
        """idx (B, t) int64 token ids -> logits (B, t - first, V) of positions `first` on (default: all).

        With `first`, the last block computes its queries, attention output, MLP and the head at those
        positions alone (every position's keys and values, and every earlier block, are still needed):
        the answer's logits for less. On CPU they are `self(idx)[:, first:]` bit for bit (a row of a
        product does not depend on how many rows are multiplied, `lab.rowcache`).

        `cache` (a `KVCache`, or the coder's `lab.rowcache.RowCache`) keeps each layer's keys and values
        for incremental decoding: the positions of idx continue after the cached ones."""
        B, T = idx.shape
        past = 0 if cache is None else cache.past(T)
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size {self.cfg.block_size}")
        if not 0 <= first < T or (first and cache is not None):
            raise ValueError(f"first={first}: must be in 0..{T - 1}, and 0 with a cache")
        pos = torch.arange(past, past + T, device=idx.device)  # (t,)
        x = self.wte(idx)  # (B, t, C)
        if self.cfg.absolute:
            x = x + self.wpe(pos)  # (t, C)
        if self.cfg.coupled and self.cfg.coupled_ids is not None:
            x = x + self.wce(self.coupled_ids[pos])  # (t, C) shared by positions of equal significance
        rope = (self.rotary_cos[pos], self.rotary_sin[pos]) if self.cfg.rotary else None  # 2 x (t, 1, 1, d/2)
        x = self.drop(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, rope, first if i == last else 0)  # (B, t, C), after the last (B, t - first, C)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.ln_f(x))  # (B, t - first, V)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def score_and_generate(self, x: torch.Tensor, answer_start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits of whole rows, and the greedy generation of their answers.

        x (B, T) holds true rows. Returns logits (B, T-1, V) for x[:, :-1], and the answer (B, A),
        A = T - answer_start, that greedy decoding produces from the prompt x[:, :answer_start] alone.
        Greedy decoding follows the true row for as long as each true token is its position's argmax, so
        a row whose every answer token is the teacher-forced argmax is generated as itself: only the
        other rows are decoded, one token per answer position, from the teacher-forced pass's cached keys
        and values of the prompt (late in training, a few rows in a hundred).

        Example (8-digit addition, answer_start 19): prompt `s 1 2 3 4 5 6 7 8 + 8 7 6 5 4 3 2 1 =`,
        generated answer `0 9 9 9 9 9 9 9 9 e` if the model has learned to add.
        """
        cache = KVCache()
        logits = self(x[:, :-1], cache)  # (B, T-1, V)
        first = logits[:, answer_start - 1 :].argmax(-1)  # (B, A) the argmax after each true prefix
        answer = x[:, answer_start:].clone()  # (B, A) what greedy decoding gives where every argmax is right
        wrong = (first != answer).any(1).nonzero().squeeze(1)  # (W,) rows greedy decoding leaves
        if len(wrong):
            cache.keep(answer_start, wrong)
            tok = first[wrong, 0]  # (W,) depends on the prompt only
            out = [tok]
            for _ in range(x.shape[1] - answer_start - 1):
                tok = self(tok[:, None], cache)[:, -1].argmax(-1)  # (W,)
                out.append(tok)
            answer[wrong] = torch.stack(out, dim=1)
        return logits, answer  # (B, T-1, V), (B, A)
