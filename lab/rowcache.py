"""Decoding one position at a time, bit for bit as the whole-sequence forward: the coder's receiver.

    cache = RowCache(T)
    for t in range(T):
        logits = model(tokens[:, t : t + 1], cache)   # (B, 1, V): exactly row t of model(tokens)

`lab.model.GPT` takes it where it takes its plain `KVCache` (each attention layer calls `attend`).
"""

from __future__ import annotations

import torch

_QUERY_ROWS: dict[tuple, int] = {}  # (attention shapes, threads, device) -> query rows that reproduce the whole


def query_rows(attn, B: int, h: int, T: int, d: int, device) -> int:
    """The fewest query rows (4, 8, 16, ... up to T) whose attention products reproduce, row for row and
    bit for bit, the whole forward's T-row products on this machine. A product of few rows may take
    other kernels and round differently (one row always does; 4 do for head sizes of 8 or more here, a
    head size of 6 needs all T); found once per shape on random data, the same way on both sides."""
    key = (B, h, T, d, torch.get_num_threads(), str(device))
    if key not in _QUERY_ROWS:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, h, T, d, generator=g).to(device) for _ in range(3))
        whole = attn._attend(q, k, v, True)  # (B, h, T, d)
        rows = 4
        while rows < T:
            firsts = {max(0, min(pos, T - rows)) for pos in range(T)}
            if all(torch.equal(attn._attend(q[:, :, f : f + rows].contiguous(), k, v, True, f),
                               whole[:, :, f : f + rows]) for f in firsts):
                break
            rows *= 2
        _QUERY_ROWS[key] = min(rows, T)
    return _QUERY_ROWS[key]


class RowCache:
    """Decoding one position at a time, *bit for bit* as the whole-sequence forward.

    The plain cache (a list, `score_and_generate`) multiplies one query row by the past keys: fast, but
    a (1, d) x (d, t) product may round differently from the row of the (T, d) x (d, T) product the
    whole-sequence forward takes. This cache keeps each layer's queries, keys and values in (B, h, T, d)
    buffers laid out as the whole forward's (contiguous; zeros ahead of the position) and multiplies
    a few query rows around `pos` (`query_rows`) by all T keys, masked as the whole forward masks them, then keeps
    row `pos`: the products, masks and softmaxes take the whole forward's kernels, so the row is the same
    row. The linear layers, LayerNorms and rotations act row by row (or element by element), and on CPU
    a row of a product does not depend on how many rows are multiplied at once (from a few on: the coder
    pads small batches). So a receiver who knows only a prefix computes exactly the distributions of the
    sender's training forward (`lab.coder`, which checks this on the machine; the receiver also checks
    every batch's distributions against the sender's checksums)."""

    def __init__(self, T: int):
        self.T, self.pos, self.layers = T, 0, []  # layers: (Q, K, V) each (B, h, T, d)

    def past(self, t: int) -> int:
        """The position the next token takes (one token at a time, within the T positions)."""
        if t != 1 or self.pos >= self.T:
            raise ValueError("a RowCache takes one token at a time, within its T positions")
        return self.pos

    def advance(self, t: int) -> None:
        self.pos += t

    def attend(self, attn, layer: int, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, h, 1, d) of the new position -> its attention output (B, h, 1, d)."""
        if len(self.layers) <= layer:
            self.layers.append(tuple(q.new_zeros(*q.shape[:2], self.T, q.shape[3]) for _ in range(3)))
        Q, K, V = self.layers[layer]
        pos = self.pos
        Q[:, :, pos], K[:, :, pos], V[:, :, pos] = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        rows = query_rows(attn, *Q.shape, Q.device)
        first = max(0, min(pos, self.T - rows))
        y = attn._attend(Q[:, :, first : first + rows].contiguous(), K, V, True, first)  # (B, h, rows, d)
        return y[:, :, pos - first : pos - first + 1]
