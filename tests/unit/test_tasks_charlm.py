"""Character-level LM tasks (ptb_char, text8): parsing, vocabularies, splits, carried-state
evaluation streams, training segments, length_loader, bits per character and bad files,
on fixture files in the real formats; real PTB valid/test where ../shared/data has them."""

from __future__ import annotations

import hashlib
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from suite.core.errors import ConfigError, DataError
from tasks import ptb_char, text8
from tasks.base import Batch, create
from tasks.charlm import stream_batches
from tasks.fixtures import text8_text, write_ptb, write_text8

PTB_MD5 = {"valid": "9e0fe5bec2a8bf43fd686dc23d5ab8bb", "test": "1f9a2d1afe00f76e8bfbe09a65439681"}


@pytest.fixture
def ptb_dir(tmp_path: Path) -> Path:
    return write_ptb(tmp_path / "own-ptb")


def ptb(tmp_path: Path, folder: Path | None, **options):
    return create("ptb_char", options, data_dir=tmp_path / "data", data_path=folder)


def expected_ptb_ids(path: Path) -> list[int]:
    """Independent reference: each line's whitespace-separated symbols, then an end-of-line symbol
    for each line break (the real files end with a lone space after the last one)."""
    *lines, tail = path.read_text().split("\n")
    ids = []
    for line in lines:
        ids += [ptb_char.ALPHABET.index(symbol) for symbol in line.split()] + [0]
    return ids + [ptb_char.ALPHABET.index(symbol) for symbol in tail.split()]


def unroll(batches: list[Batch], streams: int) -> tuple[list[list[int]], list[list[int]]]:
    """Each stream's inputs and targets, concatenated over the batches (padding dropped)."""
    inputs, targets = [[] for _ in range(streams)], [[] for _ in range(streams)]
    for batch in batches:
        steps = batch.inputs.shape[0]
        lengths = batch.lengths.tolist() if batch.lengths is not None else [steps] * streams
        for s in range(streams):
            inputs[s] += batch.inputs[:lengths[s], s].tolist()
            targets[s] += batch.targets[:lengths[s], s].tolist()
            assert (batch.targets[lengths[s]:, s] == -100).all()
    return inputs, targets


def test_ptb_vocabulary_and_parsing(tmp_path: Path, ptb_dir: Path):
    t = ptb(tmp_path, ptb_dir)
    assert (t.vocab_size, t.input_size, t.output_size, t.seq_len) == (50, 50, 50, 100)
    assert len(set(ptb_char.ALPHABET)) == 50 and " " not in ptb_char.ALPHABET
    for split in ("train", "valid", "test"):
        path = ptb_dir / f"ptb.char.{split}.txt"
        assert t.tokens(split).tolist() == expected_ptb_ids(path)
    text = t.decode(t.tokens("valid"))
    assert text.replace("\n", "") == (ptb_dir / "ptb.char.valid.txt").read_text().replace(" ", "").replace("\n", "")
    assert t.describe()["split_chars"]["valid"] == len(t.tokens("valid"))


def test_ptb_symbol_outside_vocabulary_is_rejected(tmp_path: Path, ptb_dir: Path):
    (ptb_dir / "ptb.char.test.txt").write_text(" a b c \n d E f \n")
    with pytest.raises(DataError, match=r"ptb.char.test.txt: byte b'E' at offset 11 is not in the vocabulary"):
        ptb(tmp_path, ptb_dir).prepare()
    assert not (tmp_path / "data" / "cache" / "ptb_char").exists() or \
        not any(p.name[0] != "." for p in (tmp_path / "data" / "cache" / "ptb_char").iterdir())
    (ptb_dir / "ptb.char.test.txt").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataError, match="not in the vocabulary"):
        ptb(tmp_path, ptb_dir).prepare()


@pytest.mark.parametrize("streams,length", [(7, 10), (3, 25), (5, 1), (4, 1000)])
def test_eval_streams_cover_the_split_once_in_order(tmp_path: Path, ptb_dir: Path, streams: int, length: int):
    t = ptb(tmp_path, ptb_dir, length=length)
    ids = t.tokens("valid").tolist()
    batches = list(t.loader("valid", streams, seed=0))
    assert len({b.inputs.shape[1] for b in batches}) == 1  # the same B streams throughout: state carries over
    inputs, targets = unroll(batches, streams)
    assert sum(inputs, []) == ids[:-1] and sum(targets, []) == ids[1:]  # each stream continues the last
    for s in range(streams):
        assert targets[s][:-1] == inputs[s][1:]
    sizes = [len(x) for x in inputs]
    assert max(sizes) - min(sizes) <= 1
    assert all(b.lengths is None or int(b.lengths.min()) >= 1 for b in batches)


def test_eval_stream_edge_cases():
    tokens = np.arange(10, dtype=np.uint8) % 5
    # Nine targets in four streams of 3/2/2/2: the last chunk runs to the longest stream.
    batches = list(stream_batches(tokens, 4, 2))
    assert [b.inputs.shape for b in batches] == [(3, 4)]
    assert batches[0].lengths.tolist() == [3, 2, 2, 2]
    # More streams than targets: one stream per target.
    batches = list(stream_batches(tokens[:3], 8, 5))
    assert batches[0].inputs.shape == (1, 2) and batches[0].lengths is None
    assert list(stream_batches(tokens[:1], 4, 5)) == []


def test_training_segments_random_offset_per_epoch(tmp_path: Path, ptb_dir: Path):
    t = ptb(tmp_path, ptb_dir, length=10)
    assert len(next(t.loader("train", 8, 0)).inputs) == 10
    t._tokens = {"train": np.arange(1001)}  # symbol = position, so every segment shows where it starts

    def starts(epoch, seed=0):
        out = []
        for batch in t.loader("train", 8, seed, epoch):
            assert batch.inputs.shape == (10, 8) and batch.lengths is None
            assert torch.equal(batch.inputs, batch.inputs[0] + torch.arange(10).unsqueeze(1))  # contiguous
            assert torch.equal(batch.targets, batch.inputs + 1)  # next-symbol targets
            out += batch.inputs[0].tolist()
        return out

    e0 = starts(0)
    assert e0 == starts(0) and e0 != starts(0, seed=1)  # deterministic given (seed, epoch)
    assert len({s % 10 for s in e0}) == 1 and len(set(e0)) == len(e0)  # one offset, no overlaps
    assert e0 != sorted(e0)  # shuffled
    assert len({starts(epoch)[0] % 10 for epoch in range(8)}) > 1  # a new offset each epoch
    offset = e0[0] % 10
    assert len(e0) == (1000 - offset) // 10 // 8 * 8  # all whole segments, partial last batch dropped


def test_length_loader_independent_segments(tmp_path: Path, ptb_dir: Path):
    t = ptb(tmp_path, ptb_dir)
    ids = t.tokens("test").tolist()
    for length in (5, 37):
        batches = list(t.length_loader("test", length, batch_size=4))
        segments = [col for b in batches for col in b.inputs.T.tolist()]
        assert all(b.inputs.shape[0] == length and b.lengths is None for b in batches)
        assert len(segments) == (len(ids) - 1) // length
        for k, segment in enumerate(segments):
            assert segment == ids[k * length:(k + 1) * length]
        assert batches[0].targets[:, 0].tolist() == ids[1:length + 1]
    assert len(list(t.length_loader("test", 5, 4, max_segments=6))) == 2
    with pytest.raises(ValueError):
        next(t.length_loader("test", 0, 4))


def test_score_is_bits_per_character_and_ignores_padding(tmp_path: Path, ptb_dir: Path):
    t = ptb(tmp_path, ptb_dir)
    batch = list(stream_batches(np.arange(12, dtype=np.uint8), 5, 2))[-1]
    assert batch.lengths is not None
    logits = torch.randn(*batch.targets.shape, 50)
    score = t.score(logits, batch)
    mask = batch.targets != -100
    manual = F.log_softmax(logits, -1)[mask].gather(1, batch.targets[mask].unsqueeze(1)).sum()
    assert score.count == int(mask.sum()) == int(batch.lengths.sum())
    assert math.isclose(score.loss_sum, float(-manual), rel_tol=1e-5)
    assert math.isclose(score.metric_sum, float(-manual) / math.log(2), rel_tol=1e-5)
    uniform = t.score(torch.zeros(*batch.targets.shape, 50), batch)
    assert math.isclose(uniform.metric_sum / uniform.count, math.log2(50), rel_tol=1e-6)


def test_options_and_truncation(tmp_path: Path, ptb_dir: Path):
    t = ptb(tmp_path, ptb_dir, max_chars=40)
    assert all(len(t.tokens(split)) == 40 for split in ("train", "valid", "test"))
    with pytest.raises(ConfigError, match="length must be >= 1"):
        ptb(tmp_path, ptb_dir, length=0)
    with pytest.raises(ConfigError, match="max_chars"):
        ptb(tmp_path, ptb_dir, max_chars=1)
    assert create("text8", {}, data_dir=tmp_path).seq_len == 180


def test_missing_ptb_files(tmp_path: Path, ptb_dir: Path):
    with pytest.raises(DataError, match=r"missing ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt "
                                        r"\(looked in .*data/ptb_char\).*suite data prepare ptb_char"):
        ptb(tmp_path, None).prepare()
    (ptb_dir / "ptb.char.train.txt").unlink()
    with pytest.raises(DataError, match="missing ptb.char.train.txt in"):
        ptb(tmp_path, ptb_dir).prepare()


def test_ptb_checksums_in_the_data_dir(tmp_path: Path):
    write_ptb(tmp_path / "data" / "ptb_char")
    with pytest.raises(DataError, match="md5 .* expected 9e0fe5bec2a8bf43fd686dc23d5ab8bb"):
        ptb(tmp_path, None).prepare()


def test_text8_vocabulary_and_split(tmp_path: Path):
    path = write_text8(tmp_path / "own" / "text8.zip", length=4000)
    t = create("text8", {"length": 20}, data_dir=tmp_path / "data", data_path=tmp_path / "own")
    assert (t.vocab_size, t.input_size, t.output_size, t.seq_len) == (27, 27, 27, 20)
    sizes = {split: len(t.tokens(split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 3600, "valid": 200, "test": 200}  # 90/5/5, as 90M/5M/5M of the real file
    raw = text8_text(4000, 0)
    joined = "".join(t.decode(t.tokens(split)) for split in ("train", "valid", "test"))
    assert joined == raw.decode() and path.exists()
    assert text8.split_text8(np.zeros(100_000_000, np.uint8))["valid"].shape == (5_000_000,)


def zip_with(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("text8", data)


@pytest.mark.parametrize("make,message", [
    (lambda p: write_text8(p, member="enwik8"), "has no member 'text8'"),
    (lambda p: p.write_bytes(b"PK\x03\x04 this is not a zip"), "not a readable zip"),
    (lambda p: p.write_bytes(write_text8(p).read_bytes()[:-40]), "not a readable zip"),
    (lambda p: zip_with(p, b"hello World"), "byte b'W' at offset 6"),
])
def test_bad_text8_archives(tmp_path: Path, make, message: str):
    (tmp_path / "own").mkdir()
    make(tmp_path / "own" / "text8.zip")
    t = create("text8", {}, data_dir=tmp_path / "data", data_path=tmp_path / "own")
    with pytest.raises(DataError, match=message):
        t.prepare()
    assert not (tmp_path / "data" / "cache" / "text8").exists() or \
        not any(p.name[0] != "." for p in (tmp_path / "data" / "cache" / "text8").iterdir())


def test_text8_in_the_data_dir_must_be_canonical(tmp_path: Path):
    write_text8(tmp_path / "data" / "text8" / "text8.zip")
    with pytest.raises(DataError, match="expected 31344016"):
        create("text8", {}, data_dir=tmp_path / "data").prepare()


def test_real_ptb_valid_and_test(shared_data: Path, tmp_path: Path):
    folder = shared_data / "ptb_char"
    if not (folder / "ptb.char.valid.txt").is_file():
        pytest.skip("PTB characters are not in ../shared/data")
    expected = {"valid": (786_084, 393_042, 3_370), "test": (884_846, 442_423, 3_761)}
    for split, (size, symbols, lines) in expected.items():
        path = folder / f"ptb.char.{split}.txt"
        data = path.read_bytes()
        assert len(data) == size and hashlib.md5(data).hexdigest() == PTB_MD5[split]
        ids = ptb_char.read_ptb(path)
        assert len(ids) == symbols and int((ids == 0).sum()) == lines
        assert ids.tolist() == expected_ptb_ids(path)
    valid = ptb_char.read_ptb(folder / "ptb.char.valid.txt")
    assert len(np.unique(valid)) == 50  # every symbol of the vocabulary occurs in valid
    # A folder with the real valid/test and a fixture train split: cached loading is fast.
    own = write_ptb(tmp_path / "own")
    for split in ("valid", "test"):
        (own / f"ptb.char.{split}.txt").unlink()
        (own / f"ptb.char.{split}.txt").symlink_to(folder / f"ptb.char.{split}.txt")
    ptb(tmp_path, own).prepare()
    def load() -> float:
        started = time.perf_counter()
        t = ptb(tmp_path, own)
        assert len(t.tokens("test")) == 442_423 and len(t.tokens("valid")) == 393_042
        return time.perf_counter() - started

    assert min(load() for _ in range(3)) < 1.0  # cached splits load well under a second
