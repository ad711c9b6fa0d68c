import hashlib
import json
import struct

import pytest

from lab.__main__ import main
from lab.coder import MAGIC, CodecError, compress, decompress, dump, read
from lab.run import train


def _rewrite(path, header, code_bytes):
    """Write a file with a modified header but a valid checksum (as a different set-up would)."""
    head = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(head)) + head + code_bytes
    path.write_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("more", [[], ["train.optimizer=adamw", "model.qk_norm=false"]])  # Muon (the default), AdamW
def test_round_trip_is_exact_and_matches_the_logged_bits(tmp_path, tiny_addition, more):
    cfg = tiny_addition(tmp_path, "train.max_steps=12", "train.lr=3e-3", *more)
    n = 12 * cfg.train.batch_size
    stats = compress(cfg, n, tmp_path / "s.clab")
    decompress(tmp_path / "s.clab", tmp_path / "out.txt")
    dump(cfg, n, tmp_path / "stream.txt")
    assert (tmp_path / "out.txt").read_bytes() == (tmp_path / "stream.txt").read_bytes()
    assert len((tmp_path / "out.txt").read_text().splitlines()) == n
    logged = train(cfg).bits.totals()["bits/total"]  # the callback, on the same run
    assert abs(stats.code_bits - logged) <= 0.0005 * logged + 64
    assert stats.ideal_bits == pytest.approx(logged, rel=1e-6)


def test_round_trip_of_a_finite_task_with_revisits(tmp_path, tiny_modular):
    cfg = tiny_modular(tmp_path, "task.loss_on=all")
    n = 100  # 36 train rows: the stream revisits them
    compress(cfg, n, tmp_path / "m.clab")
    decompress(tmp_path / "m.clab", tmp_path / "out.txt")
    dump(cfg, n, tmp_path / "stream.txt")
    assert (tmp_path / "out.txt").read_text() == (tmp_path / "stream.txt").read_text()
    header, _ = read(tmp_path / "m.clab")
    assert header["coded_tokens"] == 36  # only the first pass, only the answer: x o y = are known


@pytest.fixture
def small_file(tmp_path, tiny_addition):
    cfg = tiny_addition(tmp_path, "train.max_steps=4")
    compress(cfg, 4 * 32, tmp_path / "s.clab")
    return tmp_path / "s.clab"


def _decode_fails(path, out, match, capsys):
    assert main(["decompress", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "decompress error" in err and match in err, err
    assert not out.exists()  # nothing written


def test_corrupted_file_is_refused(small_file, tmp_path, capsys):
    data = bytearray(small_file.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.clab"
    bad.write_bytes(bytes(data))
    _decode_fails(bad, tmp_path / "o.txt", "corrupted", capsys)


def test_truncated_file_is_refused(small_file, tmp_path, capsys):
    bad = tmp_path / "short.clab"
    bad.write_bytes(small_file.read_bytes()[:-100])
    _decode_fails(bad, tmp_path / "o.txt", "truncated", capsys)
    bad.write_bytes(small_file.read_bytes()[:6])
    _decode_fails(bad, tmp_path / "o.txt", "truncated", capsys)


def test_other_library_version_is_refused(small_file, tmp_path, capsys):
    header, code = read(small_file)
    header["libraries"]["torch"] = "2.12.0"
    _rewrite(tmp_path / "v.clab", header, code.astype("<u4").tobytes())
    _decode_fails(tmp_path / "v.clab", tmp_path / "o.txt", "torch 2.12.0", capsys)


def test_other_config_is_refused(small_file, tmp_path, capsys):
    header, code = read(small_file)
    header["config"]["seed"] = 1  # another initialisation than the sender's
    _rewrite(tmp_path / "c.clab", header, code.astype("<u4").tobytes())
    _decode_fails(tmp_path / "c.clab", tmp_path / "o.txt", "initial weights differ", capsys)
    header["config"]["task"]["n_digits"] = 0  # a config this lab refuses
    _rewrite(tmp_path / "c.clab", header, code.astype("<u4").tobytes())
    with pytest.raises(Exception, match="task.n_digits"):
        decompress(tmp_path / "c.clab", tmp_path / "o.txt")


def test_divergence_is_detected_and_nothing_is_written(small_file, tmp_path, capsys):
    header, code = read(small_file)
    header["batches"][2] = "0" * 16  # the receiver's distributions will not match at batch 2
    _rewrite(tmp_path / "d.clab", header, code.astype("<u4").tobytes())
    _decode_fails(tmp_path / "d.clab", tmp_path / "o.txt", "diverged from the sender at batch 2", capsys)


def test_cli_round_trip(tmp_path, root, capsys):
    args = [f"{root}/configs/addition.yaml", "task.n_digits=2", "model.preset=gpt-nano", "train.batch_size=16",
            "--examples", "40"]
    assert main(["compress", *args, "-o", str(tmp_path / "a.clab")]) == 0
    assert main(["decompress", str(tmp_path / "a.clab"), "-o", str(tmp_path / "a.txt")]) == 0
    assert main(["dump", *args, "-o", str(tmp_path / "b.txt")]) == 0
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert "bits/example" in capsys.readouterr().out
    with pytest.raises(CodecError):
        read(tmp_path / "a.txt")


def test_the_sender_codes_with_its_training_forward_when_the_rows_agree(tmp_path, tiny_addition, monkeypatch):
    """The sender takes its coding distributions from the training step's own forward (no extra pass)
    wherever they equal, bit for bit, what the receiver computes position by position; it checks that on
    each batch size it meets, and the code is the one the receiver's distributions give."""
    import lab.coder

    cfg = tiny_addition(tmp_path, "train.max_steps=8")
    compress(cfg, 8 * 32 - 5, tmp_path / "s.clab")  # 7 batches of 32, then one of 27
    header, code = read(tmp_path / "s.clab")
    assert header["rows_equal"] == {"32": True}  # the last batch is not stepped on: nothing to compare
    monkeypatch.setattr(lab.coder, "rows_agree", lambda a, b: False)  # the receiver's pass on every batch
    compress(cfg, 8 * 32 - 5, tmp_path / "r.clab")
    header_r, code_r = read(tmp_path / "r.clab")
    assert header_r["rows_equal"] == {"32": False}
    assert header_r["batches"] == header["batches"] and (code_r == code).all()


def test_where_the_rows_differ_the_sender_codes_with_the_receivers_distributions(tmp_path, tiny_addition,
                                                                                monkeypatch):
    """On a machine whose training forward rounds differently from the receiver's row-by-row pass, the
    check fails and the sender codes with the receiver's distributions: the file still decodes. Without
    the check it would not."""
    import lab.coder

    step = lab.coder.Codec.step

    def rounds_differently(self, x, i):
        q = step(self, x, i)
        q[:, :, 0] += 1e-13  # the last bits of one probability, as another kernel would round it
        return q / q.sum(-1, keepdims=True)

    monkeypatch.setattr(lab.coder.Codec, "step", rounds_differently)
    cfg = tiny_addition(tmp_path, "train.max_steps=4")
    compress(cfg, 4 * 32, tmp_path / "s.clab")
    assert read(tmp_path / "s.clab")[0]["rows_equal"] == {"32": False}
    monkeypatch.undo()
    decompress(tmp_path / "s.clab", tmp_path / "out.txt")
    dump(cfg, 4 * 32, tmp_path / "stream.txt")
    assert (tmp_path / "out.txt").read_bytes() == (tmp_path / "stream.txt").read_bytes()

    monkeypatch.setattr(lab.coder.Codec, "step", rounds_differently)  # the same, trusting the forward
    monkeypatch.setattr(lab.coder, "rows_agree", lambda a, b: True)
    compress(cfg, 4 * 32, tmp_path / "t.clab")
    monkeypatch.undo()
    with pytest.raises(CodecError, match="diverged"):
        decompress(tmp_path / "t.clab", tmp_path / "out2.txt")
