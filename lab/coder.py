"""The training stream, really compressed: arithmetic coding with the model being trained (NNCP).

The stream is the one `lab.bits` defines. Sender, for each batch of the stream: code every sent token of
each new example (the model's distribution where the model is trained on the position, else the task's
exact law; known tokens are not sent), then take the training step `lab train` takes
(`LabModule.step`, the same function, in `Codec`). Receiver: rebuild the same initial model from the config and
seed, fill in the known tokens of each scheduled example (`Task.known_tokens`), decode the others position
by position (each position's distribution needs the decoded prefix), and take the same step. Revisited
examples (table tasks, later epochs) are not coded: the receiver has them. Dropout masks are a pure
function of (seed, step), so the receiver's steps draw the sender's.

Determinism: the receiver knows only a prefix, so it computes the distributions one position at a time
(`Coding`), with `lab.rowcache.RowCache`: each position's row goes through the whole-sequence forward's
shapes, so it equals, bit for bit, the row of the training forward's logits. The sender therefore codes
with the logits its training step computes anyway (`LabModule.step`): encoding costs little more than
training. That equality is a property of the machine's kernels (rows of a product must not depend on
how many rows are multiplied); the sender checks it on each batch shape it meets, with the receiver's
computation, and codes with the receiver's distributions wherever it fails, so the file decodes either
way. The thread count is fixed by the file.
Each batch's coding distributions have a checksum in the file: a receiver that diverges stops with an
error instead of writing a wrong stream.

File: b"CLAB" | u32 header length | JSON header | u32 code words | sha256 of everything before.
Probabilities are quantized by constriction's Categorical model (24-bit fixed point, perfect=False),
the same on both sides because they see the same float64 arrays.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import constriction
import numpy as np
import torch

from lab.build import build
from lab.config import Config, from_dict, to_dict
from lab.errors import ConfigError
from lab.rowcache import RowCache

FORMAT = 3  # 2: the stream of lab.bits (known tokens free, law-coded positions); 3: rows as the whole forward
MIN_ROWS = 64  # the receiver's row pass multiplies at least this many rows (small counts take other kernels)
MAGIC = b"CLAB"
LIBRARIES = ("torch", "numpy", "constriction", "compression-lab")
CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


class CodecError(RuntimeError):
    """A file that cannot be decoded faithfully: corrupted, truncated, or from another set-up."""


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in LIBRARIES}


@dataclass
class Stats:
    examples: int
    coded_tokens: int
    ideal_bits: float  # sum of -log2 q over the coded tokens (float64, before quantization): bits/total
    code_bits: int  # size of the arithmetic code
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.coded_tokens / self.seconds


def distributions(logits: torch.Tensor) -> np.ndarray:
    """Logits (..., V) -> (..., V) float64 coding distributions."""
    return torch.softmax(logits.double(), dim=-1).numpy()


class Coding:
    """The coding distributions of one batch, position by position: feed token t, get q(x_{t+1} | x_<=t),
    the row of the whole-sequence forward at t (`RowCache`). Fewer than MIN_ROWS rows are padded with
    copies of the first (both sides pad alike)."""

    def __init__(self, model, T: int):
        self.model, self.cache = model, RowCache(T)

    @torch.no_grad()
    def next(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (B,) at the next position -> (B, V) float64 distribution of the token after it."""
        tok = torch.from_numpy(tokens)  # (B,)
        if len(tok) < MIN_ROWS:
            tok = torch.cat([tok, tok[:1].expand(MIN_ROWS - len(tok))])
        logits = self.model(tok[:, None], self.cache)[: len(tokens), -1]  # (B, V)
        return distributions(logits)


class Codec:
    """What both sides run: the same initial weights, one identical training step per batch (`step`),
    and the coding of each batch's sent tokens, position by position (`code`)."""

    def __init__(self, cfg: Config):
        if cfg.train.devices * cfg.train.num_nodes != 1 or cfg.train.precision != "32":
            raise ConfigError("train.devices: compression runs one process in fp32")
        b = build(cfg)  # the same initial weights as `lab train`
        self.cfg, self.task, self.module, self.batch_size = cfg, b.task, b.module, b.batch_size
        self.opt, self.sched = b.optimizer()
        self.param_checksum_at_start = self.param_checksum()

    def param_checksum(self) -> str:
        h = hashlib.sha256()
        for p in self.module.model.parameters():
            h.update(p.detach().numpy().tobytes())
        return h.hexdigest()[:16]

    def coding(self) -> Coding:
        self.module.model.eval()
        return Coding(self.module.model, self.task.block_size)

    def step(self, x: np.ndarray, step: int) -> np.ndarray:
        """Training step `step` on the whole batch: the function `lab train` runs. -> (B, T-1, V) the
        coding distributions of the weights before it (the rows a receiver's `Coding` computes)."""
        _, _, logits = self.module.step(torch.from_numpy(x), self.opt, self.sched, step)
        return distributions(logits)

    def code(self, x: np.ndarray, rows: np.ndarray, code_one, q: np.ndarray | None = None) -> tuple[str, float]:
        """Position by position over the batch x (B, T): for each sent target t, the (n, V) coding
        distribution of the n rows being sent, from the model or from the task's law; `code_one(t, p)`
        encodes x[rows, t+1], or decodes it into x. The model's distributions are `q` (B, T-1, V) when the
        sender has them from its training forward, else computed position by position (`Coding`, every
        row feeding the cache). -> (checksum of the distributions, sum of -log2 p of the coded tokens)."""
        task, plan, h, bits = self.task, self.task.plan, hashlib.sha256(), 0.0
        coding = self.coding() if q is None else None
        for t in range(plan.sent[-1] + 1):
            qt = coding.next(x[:, t]) if coding is not None else q[:, t]  # (B, V): the model's law of x[:, t+1]
            if not plan.sent_mask[t]:
                continue
            p = np.ascontiguousarray(qt[rows] if plan.model_mask[t] else task.law_probs(x[rows], t))  # (n, V)
            code_one(t, p)
            h.update(p.tobytes())
            bits -= float(np.log2(p[np.arange(len(rows)), x[rows, t + 1]]).sum())
        return _checksum(h), bits

    def batches(self, n_examples: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(step, ids, new) of the batches holding the first n_examples of the stream."""
        out, done = [], 0
        while done < n_examples:
            ids, new = self.task.schedule(len(out), self.batch_size)
            take = min(len(ids), n_examples - done)
            out.append((len(out), ids[:take], new[:take]))
            done += take
        return out


def rows_agree(receiver: np.ndarray, q: np.ndarray) -> bool:
    """The training forward's distributions (B, T-1, V) equal the receiver's, bit for bit."""
    return bool(np.array_equal(receiver, q))


def _checksum(h) -> str:
    return h.hexdigest()[:16]


@contextmanager
def _deterministic(threads: int):
    """Deterministic kernels and a fixed thread count while coding; the caller's settings after."""
    old = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.set_num_threads(old[1])


def compress(cfg: Config, n_examples: int, out: str | Path) -> Stats:
    with _deterministic(cfg.train.threads):
        return _compress(cfg, n_examples, out)


def _compress(cfg: Config, n_examples: int, out: str | Path) -> Stats:
    t0 = time.time()
    codec = Codec(cfg)
    task = codec.task
    encoder = constriction.stream.queue.RangeEncoder()
    checksums, coded, ideal_bits = [], 0, 0.0
    batches = codec.batches(n_examples)
    rows_equal: dict[int, bool] = {}  # batch size -> the training forward's rows equal the receiver's
    for step, ids, new in batches:
        x = task.train_batch(step, codec.batch_size).x[: len(ids)]  # (B, T) the data to send
        rows = np.flatnonzero(new)
        last = step == len(batches) - 1  # (no step after the last batch: nothing is coded after it)
        receiver = None
        if len(rows) and (last or not rows_equal.get(len(x), False)):  # the receiver's computation
            coding = codec.coding()
            receiver = np.stack([coding.next(x[:, t]) for t in range(task.block_size)], axis=1)  # (B, T-1, V)
        q = None if last else codec.step(x, step)  # the training step's own distributions
        if receiver is not None and q is not None and len(x) not in rows_equal:
            rows_equal[len(x)] = rows_agree(receiver, q)
        checksum = ""
        if len(rows):
            def encode(t, p, x=x, rows=rows):
                encoder.encode(x[rows, t + 1].astype(np.int32), CATEGORICAL, p)

            checksum, bits = codec.code(x, rows, encode, q if receiver is None else receiver)
            ideal_bits += bits
            coded += len(rows) * len(task.plan.sent)
        checksums.append(checksum)
    code = encoder.get_compressed()  # uint32 words
    header = {
        "format": FORMAT, "config": to_dict(cfg), "libraries": library_versions(),
        "threads": torch.get_num_threads(), "examples": n_examples, "params": codec.param_checksum_at_start,
        "batches": checksums, "coded_tokens": coded, "ideal_bits": ideal_bits,
        "rows_equal": {str(k): v for k, v in rows_equal.items()},  # where the sender could code with its forward
    }
    _write(Path(out), header, code)
    return Stats(n_examples, coded, ideal_bits, 32 * len(code), time.time() - t0)


def _write(path: Path, header: dict, code: np.ndarray) -> None:
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + code.astype("<u4").tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())


def read(path: str | Path) -> tuple[dict, np.ndarray]:
    """Header and code of a file, after checking its integrity."""
    data = Path(path).read_bytes()
    if len(data) < 8 + 32 or data[:4] != MAGIC:
        raise CodecError(f"{path}: not a Compression Lab file (or truncated)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CodecError(f"{path}: checksum mismatch: the file is corrupted or truncated")
    (n,) = struct.unpack("<I", body[4:8])
    header = json.loads(body[8 : 8 + n])
    code = np.frombuffer(body[8 + n :], dtype="<u4").astype(np.uint32)
    return header, code


def decompress(path: str | Path, out: str | Path) -> Stats:
    header, code = read(path)
    with _deterministic(header.get("threads", 0)):
        return _decompress(path, out, header, code)


def _decompress(path: str | Path, out: str | Path, header: dict, code: np.ndarray) -> Stats:
    t0 = time.time()
    if header.get("format") != FORMAT:
        raise CodecError(f"{path}: format {header.get('format')} is not {FORMAT}")
    mine = library_versions()
    for lib, v in header["libraries"].items():
        if mine.get(lib) != v:
            raise CodecError(f"{path}: written with {lib} {v}, this is {lib} {mine.get(lib)}: decoding would diverge")
    cfg = from_dict(header["config"])
    codec = Codec(cfg)
    if codec.param_checksum_at_start != header["params"]:
        raise CodecError(f"{path}: the initial weights differ from the sender's (config or code changed)")
    task = codec.task
    decoder = constriction.stream.queue.RangeDecoder(code)
    n = header["examples"]
    store: dict[int, np.ndarray] = {}
    lines = []
    coded = 0
    batches = codec.batches(n)
    for step, ids, new in batches:
        x = task.known_tokens(ids)  # (B, T) what the receiver knows of these examples before decoding
        rows = np.flatnonzero(new)
        for i in np.flatnonzero(~new):
            x[i] = store[int(ids[i])]
        checksum = ""
        if len(rows):
            def decode(t, p, x=x, rows=rows):
                x[rows, t + 1] = decoder.decode(CATEGORICAL, p)

            checksum, _ = codec.code(x, rows, decode)
            coded += len(rows) * len(task.plan.sent)
        if checksum != header["batches"][step]:
            raise CodecError(f"{path}: decoding diverged from the sender at batch {step} "
                             f"(different machine arithmetic, threads or code); nothing was written")
        for i in rows:
            store[int(ids[i])] = x[i].copy()
        lines += [task.to_text(row) for row in x]
        if step < len(batches) - 1:
            codec.step(x, step)
    tmp = Path(str(out) + ".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(out)
    return Stats(n, coded, header["ideal_bits"], 32 * len(code), time.time() - t0)


def dump(cfg: Config, n_examples: int, out: str | Path) -> None:
    """The first n_examples of the training stream as text, one example per line."""
    b = build(cfg)
    task, batch = b.task, b.batch_size
    lines, step = [], 0
    while len(lines) < n_examples:
        x = task.train_batch(step, batch).x
        lines += [task.to_text(row) for row in x[: n_examples - len(lines)]]
        step += 1
    Path(out).write_text("".join(lines))
