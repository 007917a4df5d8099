"""Character-level language modelling (Cooijmans et al. 2016, Sections 5.2 and 5.3), shared by `ptb_char` and `text8`.

A corpus is one uint8 array of symbol ids per split, cached as `.npy` and memory-mapped.
Training takes segments of `length` symbols (BN's T_max) from a random offset drawn anew each
epoch, shuffled, without carried state. Evaluation covers the whole split: it is cut into B
contiguous streams (B = the evaluation batch size), each read in consecutive segments with
the state (h, c) and the time index carried from one batch to the next (`carry_state`), so
steps far beyond T_max are evaluated with the statistics of step T_max, as in the paper.
Every target of the split is scored exactly once; when the split does not divide evenly,
the last batch carries `lengths` and padded targets are -100 (ignored).

`length_loader` serves the generalization experiment (Figure 3b): independent segments of
any length, each from the initial state. Scores are bits per character (nats / ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from suite.core.errors import ConfigError, DataError
from tasks.base import Batch, DataStatus, PerStepHead, Score, Task
from tasks.data import SplitCache, first_complete, missing_error

SPLITS = ("train", "valid", "test")
IGNORE = -100  # F.cross_entropy's default ignore_index: padded targets of the last evaluation batch


@dataclass(frozen=True)
class CharLMOptions:
    """length: training segment length (= BN's T_max); max_chars: use only the first N symbols of each split."""

    length: int = 100
    max_chars: int | None = None


def lookup_table(alphabet: str, extra: dict[int, int] | None = None) -> np.ndarray:
    """byte -> symbol id, 255 for bytes outside the alphabet."""
    table = np.full(256, 255, dtype=np.uint8)
    for index, char in enumerate(alphabet):
        table[ord(char)] = index
    for byte, index in (extra or {}).items():
        table[byte] = index
    return table


def encode(raw: bytes | np.ndarray, table: np.ndarray, where: str) -> np.ndarray:
    """Map bytes to symbol ids; a DataError names the first byte outside the alphabet."""
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray) else raw
    ids = table[data]
    bad = np.flatnonzero(ids == 255)
    if len(bad):
        raise DataError(f"{where}: byte {bytes(data[bad[:1]])!r} at offset {int(bad[0])} is not in the "
                        f"vocabulary ({len(bad)} such bytes); not a valid file of this corpus")
    return ids


def stream_batches(tokens: np.ndarray, streams: int, length: int) -> Iterator[Batch]:
    """The whole split as `streams` contiguous streams, read `length` steps at a time (carried state)."""
    n_targets = len(tokens) - 1
    streams = min(streams, n_targets)
    if streams < 1:
        return
    q, r = divmod(n_targets, streams)
    sizes = np.full(streams, q)
    sizes[:r] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Every stream has at least q targets; the last chunk runs to the longest stream so that no
    # stream is ever empty in a batch (lengths must be >= 1).
    chunks = math.ceil(q / length)
    for k in range(chunks):
        lo = k * length
        hi = lo + length if k < chunks - 1 else int(sizes.max())
        steps = hi - lo
        valid = np.clip(sizes - lo, 0, steps)
        pos = np.minimum(starts[:, None] + lo + np.arange(steps), n_targets - 1)
        mask = np.arange(steps) < valid[:, None]
        # int64 before np.where: with uint8 tokens, -100 would wrap around to 156.
        inputs = np.where(mask, tokens[pos].astype(np.int64), 0)
        targets = np.where(mask, tokens[pos + 1].astype(np.int64), IGNORE)
        lengths = None if bool(mask.all()) else torch.from_numpy(valid.astype(np.int64))
        yield Batch(torch.from_numpy(inputs.T.copy()), torch.from_numpy(targets.T.copy()), lengths)


def segment_batches(tokens: np.ndarray, starts: np.ndarray, length: int, batch_size: int) -> Iterator[Batch]:
    """Batches of independent segments of `length` inputs (and their next-symbol targets) at `starts`."""
    offsets = np.arange(length + 1)
    for first in range(0, len(starts), batch_size):
        window = tokens[starts[first:first + batch_size, None] + offsets].astype(np.int64)
        yield Batch(torch.from_numpy(window[:, :-1].T.copy()), torch.from_numpy(window[:, 1:].T.copy()))


class CharLMTask(Task):
    """Next-symbol prediction over a character corpus; subclasses say where the files are and how to parse them."""

    metric = "bpc"
    mode = "min"
    carry_state = True
    Options = CharLMOptions
    alphabet: ClassVar[str] = ""  # symbol id i is alphabet[i]
    folder: ClassVar[str] = ""  # the data dir's sub-folder for this corpus
    source_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: CharLMOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        if options.length < 1:
            raise ConfigError(f"{self.name}: length must be >= 1, got {options.length}")
        if options.max_chars is not None and options.max_chars < 2:
            raise ConfigError(f"{self.name}: max_chars must be >= 2, got {options.max_chars}")
        self.vocab_size = self.input_size = self.output_size = len(self.alphabet)
        self.seq_len = options.length
        self._tokens: dict[str, np.ndarray] | None = None
        self._origin: Path | None = None

    # -- subclass hooks ------------------------------------------------------------------------
    def parse(self, folder: Path) -> dict[str, np.ndarray]:
        """Symbol ids of every split, read from the source files in `folder` (checked)."""
        raise NotImplementedError

    # -- files -----------------------------------------------------------------------------------
    def managed_dir(self) -> Path:
        """The suite's own folder for this corpus, where `suite data prepare` downloads to."""
        return self.data_dir / self.folder

    def places(self) -> list[Path]:
        """Folders searched for the source files: data.path alone, else the data dir's folder."""
        return [self.data_path] if self.data_path else [self.managed_dir()]

    def missing(self) -> DataError:
        """The one error for absent source files."""
        return missing_error(self.name, self.source_names, self.places(), self.data_dir,
                             own_copy=bool(self.data_path))

    def _cache(self, folder: Path) -> SplitCache:
        return SplitCache(self.data_dir, self.folder, [folder / name for name in self.source_names])

    def prepare(self) -> None:
        """Locate and check the files and build the token cache (under the corpus's lock)."""
        self._load()

    def data_status(self) -> DataStatus:
        """Present and cached, present only, or missing."""
        folder = first_complete(self.places(), self.source_names)
        if folder is None:
            return DataStatus(False, str(self.missing()))
        return DataStatus(True, f"{folder} ({'cached' if self._cache(folder).ready() else 'not cached yet'})")

    def _load(self) -> dict[str, np.ndarray]:
        if self._tokens is None:
            origin = first_complete(self.places(), self.source_names)
            if origin is None:
                raise self.missing()
            arrays = self._cache(origin).get(lambda: self.parse(origin), SPLITS, mmap=True,
                                             lock=(self.data_dir, self.folder))
            limit = self.options.max_chars
            self._tokens = {split: arrays[split][:limit] if limit else arrays[split] for split in SPLITS}
            self._origin = origin
        return self._tokens

    def tokens(self, split: str) -> np.ndarray:
        """Symbol ids of a split (memory-mapped; truncated to `max_chars`)."""
        if split not in SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
        return self._load()[split]

    def decode(self, ids: Any) -> str:
        """Symbol ids back to text (for inspection and tests)."""
        return "".join(self.alphabet[int(i)] for i in np.asarray(ids).ravel())

    # -- batches ---------------------------------------------------------------------------------
    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Train: shuffled segments from a random offset per epoch. Valid/test: carried-state streams."""
        tokens = self.tokens(split)
        length = self.options.length
        if split != "train":
            yield from stream_batches(tokens, batch_size, length)
            return
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])
        offset = int(rng.integers(length)) if len(tokens) > 2 * length else 0
        count = (len(tokens) - 1 - offset) // length
        starts = offset + length * rng.permutation(count)
        if count >= batch_size:  # equal batches for batch statistics: drop the partial last one
            starts = starts[:count - count % batch_size]
        yield from segment_batches(tokens, starts, length, batch_size)

    def length_loader(self, split: str, length: int, batch_size: int,
                      max_segments: int | None = None) -> Iterator[Batch]:
        """Independent consecutive segments of `length` from the start of `split`, each from the
        initial state (no carried state): bits per character as a function of length (Figure 3b)."""
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        tokens = self.tokens(split)
        count = (len(tokens) - 1) // length
        if max_segments is not None:
            count = min(count, max_segments)
        yield from segment_batches(tokens, length * np.arange(count), length, batch_size)

    def head(self, hidden_size: int) -> PerStepHead:
        """A next-symbol distribution at every step."""
        return PerStepHead(hidden_size, self.output_size)

    def score(self, logits: torch.Tensor, batch: Batch) -> Score:
        """Summed cross-entropy in nats, in bits, and the number of (unpadded) targets."""
        targets = batch.targets.reshape(-1)
        nats = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="sum",
                                     ignore_index=IGNORE))
        return Score(nats, nats / math.log(2), float((targets != IGNORE).sum()))

    def describe(self) -> dict[str, Any]:
        """Segment length, truncation, vocabulary, files and split sizes."""
        facts: dict[str, Any] = {"length": self.options.length, "max_chars": self.options.max_chars,
                                 "vocabulary": self.alphabet}
        if self._tokens is not None:
            facts["files"] = str(self._origin)
            facts["split_chars"] = {split: len(tokens) for split, tokens in self._tokens.items()}
        return facts
