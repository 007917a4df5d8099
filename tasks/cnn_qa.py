"""`cnn_qa`: reading comprehension on the DeepMind CNN questions with the Attentive Reader
(Hermann et al. 2015; Cooijmans et al. 2016, Section 5.4 and Appendix C), error rate.

A question is a context document, a cloze question with `@placeholder`, and the answer, one
of the anonymized `@entityN` of the document. The model (`tasks.cnn_qa_model`) reads the
document and the question with any registered variant and picks an entity among those that
occur in the document it reads. Data handling lives in `tasks.cnn_qa_data`: `suite data
prepare cnn_qa` fetches `cnn.tgz` (or takes `--set data.path=` a questions folder or the
archive) and builds the token cache once; a trial memory-maps it.

Batches are bucketed by document length (shuffled pools of `bucket_batches` batches, each
sorted by length) so padding stays small; validation and test go through the whole split,
sorted by length, and the error is exact (sums and counts). A question whose answer is not
in the document it reads (possible with `top_sentences` or `max_doc_len`) always counts as an
error and adds nothing to the loss.

The paper's variants are options, not copies: BN-LSTM is `model.variant = "bn_lstm"`;
BN-everywhere adds `attention_bn = true` (BN on each term entering the attention's and the
output's tanh); BN-e* adds `sequence_statistics = true` (statistics of the input terms shared
over time: the variant's `statistics = "sequence"` and the attention's document term);
BN-e** adds `model.bidirectional = true`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from suite.core.errors import ConfigError, DataError
from tasks.base import Batch, DataStatus, Score, Task, register
from tasks.cnn_qa_data import (ARRAY_NAMES, ENTITY0, ON_ERROR, SPLITS, build_cache, questions_root,
                               source_paths)
from tasks.cnn_qa_model import AttentiveReader
from tasks.data import Fetch, Remote, SplitCache, download

FOLDER = "cnn_qa"
# The archive linked from the data set's page (cs.nyu.edu/~kcho/DMQA), served by Google Drive;
# no checksum is published with it, so its layout is checked after the download instead.
_DRIVE_ID = "0BwmD_VLjROrfTTljRDVZMFJnVWM"
ARCHIVE = Remote("cnn.tgz", (f"https://drive.usercontent.google.com/download?id={_DRIVE_ID}&export=download&confirm=t",
                             f"https://drive.google.com/uc?export=download&id={_DRIVE_ID}&confirm=t"))
PUBLISHED_COUNTS = {"train": 380_298, "valid": 3_924, "test": 3_198}
CACHE_VERSION = "cnn_qa-1"


@dataclass(frozen=True)
class CNNQAOptions:
    """Data, batching and reader options (the paper's choices where it states them)."""

    top_sentences: int = 0  # keep the k context sentences sharing most words with the question (paper: 4); 0 = all
    vocab_size: int = 50_000  # most frequent training words kept; entities, @placeholder, pad, unk come on top
    on_error: str = "skip"  # malformed files: "skip" (reported) or "raise" (nothing is cached)
    max_questions: int | None = None  # the first N questions of each split (quick CPU runs)
    max_doc_len: int | None = None  # truncate documents to N tokens (quick CPU runs)
    bucket_batches: int = 20  # training batches per length-sorted pool
    embed_size: int = 240
    attention_bn: bool = False  # BN-everywhere: BN on every term entering a tanh of the reader
    sequence_statistics: bool = False  # BN-e*: input terms' statistics shared over time
    attention_gamma: float = 0.1  # initial BN scale of the reader's own norms (the paper's 0.1)


@dataclass
class QABatch(Batch):
    """A batch of questions: document tokens (T, B) in `inputs` with `lengths`, answers in `targets`,
    question tokens (Tq, B) with their lengths, and the candidate entities (B, E) of each document."""

    query: torch.Tensor | None = None
    query_lengths: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> QABatch:
        """The batch on `device`."""
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return QABatch(move(self.inputs), move(self.targets), move(self.lengths), move(self.query),
                       move(self.query_lengths), move(self.candidates))


@dataclass
class SplitData:
    """The cached arrays of one split (memory-mapped), with per-question document lengths."""

    doc_tokens: np.ndarray
    doc_offsets: np.ndarray
    doc_index: np.ndarray
    query_tokens: np.ndarray
    query_offsets: np.ndarray
    answer: np.ndarray
    answerable: np.ndarray
    doc_lengths: np.ndarray  # per question, after max_doc_len
    query_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.answer)


def gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, T) zero-padded rows tokens[start:start+length], T = the longest."""
    steps = np.arange(int(lengths.max()))
    keep = steps < lengths[:, None]
    positions = np.minimum(starts[:, None] + steps, max(len(tokens) - 1, 0))
    return np.where(keep, tokens[positions], 0).astype(np.int64)


@register
class CNNQA(Task):
    """Cloze-style question answering on CNN news articles, Attentive Reader, error rate."""

    name = "cnn_qa"
    description = "DeepMind CNN questions, Attentive Reader over entities, error rate"
    metric = "error"
    mode = "min"
    Options = CNNQAOptions
    # The paper's settings (Appendix C; the authors' launch scripts): 240 units, batch 64, Adam
    # lr 8e-5, clip 10; steps and eval_every are the suite's choice (about 10 epochs of 380k).
    defaults = {"model": {"hidden_size": 240}, "optim": {"name": "adam", "lr": 8e-5, "clip": 10.0},
                "train": {"batch_size": 64, "steps": 60_000, "eval_every": 1000}}

    def __init__(self, options: CNNQAOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        checks = [(options.top_sentences >= 0, "top_sentences must be >= 0"),
                  (options.vocab_size >= 1, "vocab_size must be >= 1"),
                  (options.on_error in ON_ERROR, f"on_error must be one of {', '.join(ON_ERROR)}"),
                  (options.max_questions is None or options.max_questions >= 1, "max_questions must be >= 1"),
                  (options.max_doc_len is None or options.max_doc_len >= 1, "max_doc_len must be >= 1"),
                  (options.bucket_batches >= 1, "bucket_batches must be >= 1"),
                  (options.embed_size >= 1, "embed_size must be >= 1"),
                  (options.attention_gamma > 0, "attention_gamma must be > 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{self.name}: {message}")
        self.input_size = options.embed_size
        self._data: dict[str, SplitData] | None = None
        self._meta: dict[str, Any] = {}

    # -- files -----------------------------------------------------------------------------------
    def managed_dir(self) -> Path:
        """The suite's own folder for this data set, where `suite data prepare` downloads to."""
        return self.data_dir / FOLDER

    def locate(self) -> Path | None:
        """The source: data.path (a questions folder, a folder above one, or the archive), else the managed folder."""
        places = [self.data_path] if self.data_path else [self.managed_dir()]
        for place in places:
            if place.is_file():
                return place
            root = questions_root(place)
            if root is not None:
                return root
            if (place / ARCHIVE.name).is_file():
                return place / ARCHIVE.name
        return None

    def missing(self) -> DataError:
        """The one error for absent data."""
        if self.data_path:
            return DataError(f"{self.name}: no questions/{{training,validation,test}}/ folders or {ARCHIVE.name} "
                             f"at {self.data_path} (set by data.path); point it at your copy of the DeepMind Q&A "
                             f"cnn questions, or drop data.path and fetch them with `suite data prepare {self.name}`")
        return DataError(f"{self.name}: no questions found in {self.managed_dir()}; fetch them with "
                         f"`suite data prepare {self.name} --data-dir {self.data_dir}`, or point to your own copy "
                         f"(a folder with questions/training etc., or {ARCHIVE.name}) with --set data.path=PATH")

    def fetch(self, fetch: Fetch | None = None) -> None:
        """Download cnn.tgz unless a copy is found; a download that is not the questions archive is removed."""
        if self.locate() is not None:
            return
        if self.data_path:
            raise self.missing()
        archive = download(ARCHIVE, self.managed_dir(), fetch)
        if not _holds_questions(archive):
            archive.unlink(missing_ok=True)
            raise DataError(f"the download of {ARCHIVE.name} is not the questions archive (Google Drive may have "
                            f"served a web page); download cnn.tgz (the 'questions' link of "
                            f"https://cs.nyu.edu/~kcho/DMQA/) by hand into {self.managed_dir()}")

    def _cache(self, source: Path) -> SplitCache:
        variant = f"{CACHE_VERSION} vocab={self.options.vocab_size} top={self.options.top_sentences}"
        return SplitCache(self.data_dir, FOLDER, source_paths(source), variant=variant)

    def data_status(self) -> DataStatus:
        """Present and cached, present only, or missing."""
        source = self.locate()
        if source is None:
            return DataStatus(False, str(self.missing()))
        cache = self._cache(source)
        if not cache.ready():
            return DataStatus(True, f"{source} (not cached yet)")
        skipped = _lines(cache.load(["skipped"])["skipped"])
        note = f"; {len(skipped)} malformed files skipped, first: {skipped[0]}" if skipped else ""
        return DataStatus(True, f"{source} (cached in {cache.directory}{note})")

    def prepare(self) -> None:
        """Locate the source and build (or open) the token cache."""
        self._load()

    def _load(self) -> dict[str, SplitData]:
        if self._data is not None:
            return self._data
        source = self.locate()
        if source is None:
            raise self.missing()
        opts = self.options
        cache = self._cache(source)
        arrays = cache.get(lambda: build_cache(source, opts.vocab_size, opts.top_sentences, opts.on_error),
                           ARRAY_NAMES, mmap=True, lock=(self.data_dir, FOLDER))
        skipped = _lines(arrays["skipped"])
        if skipped and opts.on_error == "raise":
            raise DataError(f"{len(skipped)} malformed question files (cached with on_error=\"skip\"), first: "
                            f"{skipped[0]}")
        data = {}
        for split in SPLITS:
            data[split] = _split(arrays, split, opts.max_questions, opts.max_doc_len)
            if len(data[split]) == 0:
                raise DataError(f"{self.name}: split {split} of {source} has no well-formed questions")
        self._meta = {"source": str(source), "cache": str(cache.directory), "skipped": skipped,
                      "vocab": arrays["vocab"], "entities": int(arrays["entities"][0])}
        self._data = data
        return data

    def split(self, split: str) -> SplitData:
        """The arrays of one split."""
        if split not in SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; splits: {', '.join(SPLITS)}")
        return self._load()[split]

    def words(self) -> list[str]:
        """The vocabulary: word of token id i at index i."""
        self._load()
        if "words" not in self._meta:
            self._meta["words"] = bytes(self._meta["vocab"]).decode().split("\n")
        return self._meta["words"]

    # -- shapes: read from the data; placeholders of 1 while there is no data (e.g. `suite tasks`) --
    def _available(self) -> bool:
        """Open the cache if the data can be found (building it if needed); False when there is none."""
        if self._data is None and self.locate() is None:
            return False
        self._load()
        return True

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        """Number of token ids."""
        return len(self.words()) if self._available() else 1

    @property
    def output_size(self) -> int:  # type: ignore[override]
        """Number of entity ids (@entity0 .. @entity{E-1})."""
        return self._meta["entities"] if self._available() else 1

    @property
    def seq_len(self) -> int:  # type: ignore[override]
        """Longest training document (BN's T_max for the document encoder)."""
        return int(self.split("train").doc_lengths.max()) if self._available() else 1

    @property
    def query_len(self) -> int:
        """Longest training question (T_max of the question encoder)."""
        return int(self.split("train").query_lengths.max()) if self._available() else 1

    # -- batches ---------------------------------------------------------------------------------
    def batch(self, split: str, index: np.ndarray) -> QABatch:
        """The questions `index` of `split` as one padded batch."""
        data = self.split(split)
        index = np.asarray(index, dtype=np.int64)
        lengths = data.doc_lengths[index]
        docs = gather(data.doc_tokens, data.doc_offsets[data.doc_index[index]], lengths)
        query_lengths = data.query_lengths[index]
        queries = gather(data.query_tokens, data.query_offsets[index], query_lengths)
        entities = self.output_size
        # Every token that is not an entity (words, padding) is sent to column 0, which is dropped.
        columns = np.where((docs >= ENTITY0) & (docs < ENTITY0 + entities), docs, 0)
        present = np.zeros((len(index), ENTITY0 + entities), dtype=bool)
        present[np.arange(len(index))[:, None], columns] = True
        return QABatch(torch.from_numpy(docs.T.copy()), torch.from_numpy(data.answer[index].astype(np.int64)),
                       torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(queries.T.copy()),
                       torch.from_numpy(query_lengths.astype(np.int64)),
                       torch.from_numpy(present[:, ENTITY0:].copy()))

    def batch_indices(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> list[np.ndarray]:
        """Question indices of each batch: bucketed and shuffled for training, length-sorted otherwise."""
        lengths = self.split(split).doc_lengths
        if split != "train":
            order = np.argsort(lengths, kind="stable")
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])
        order = rng.permutation(len(lengths))
        pool = batch_size * self.options.bucket_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if len(order) >= batch_size:  # equal batches for batch statistics: drop the one partial batch
            batches = [b for b in batches if len(b) == batch_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[QABatch]:
        """Batches of one pass over `split`; deterministic given (seed, epoch)."""
        for index in self.batch_indices(split, batch_size, seed, epoch):
            yield self.batch(split, index)

    # -- model and judgement ---------------------------------------------------------------------
    def build_model(self, config: Any) -> nn.Module:
        """The Attentive Reader with encoders of the configured variant."""
        return AttentiveReader(self, config)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the answerable questions of the batch."""
        ok = _answerable(batch)
        if not bool(ok.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[ok], batch.targets[ok])

    def score(self, logits: torch.Tensor, batch: Batch) -> Score:
        """Summed cross-entropy (answerable questions), number of errors, number of questions."""
        ok = _answerable(batch)
        loss = F.cross_entropy(logits[ok], batch.targets[ok], reduction="sum") if bool(ok.any()) else 0.0
        wrong = (logits.argmax(-1) != batch.targets) | ~ok
        return Score(float(loss), float(wrong.sum()), float(batch.targets.numel()))

    def describe(self) -> dict[str, Any]:
        """Options that shape the data, the source, sizes, and the share of questions whose answer is in
        the (top-k filtered, not max_doc_len-truncated) document: one minus the lowest reachable error."""
        facts: dict[str, Any] = {"top_sentences": self.options.top_sentences, "vocab_cap": self.options.vocab_size,
                                 "max_questions": self.options.max_questions, "max_doc_len": self.options.max_doc_len}
        if self._data is not None:
            facts.update(source=self._meta["source"], vocab_size=self.vocab_size, entities=self.output_size,
                         skipped_files=len(self._meta["skipped"]), skipped_first=self._meta["skipped"][:5],
                         questions={s: len(d) for s, d in self._data.items()},
                         answerable={s: float(d.answerable.mean()) for s, d in self._data.items()},
                         published_questions=PUBLISHED_COUNTS)
        return facts


def _answerable(batch: QABatch) -> torch.Tensor:
    return batch.candidates.gather(1, batch.targets.unsqueeze(1)).squeeze(1)


def _lines(array: np.ndarray) -> list[str]:
    text = bytes(array).decode()
    return text.split("\n") if text else []


def _split(arrays: dict[str, np.ndarray], split: str, max_questions: int | None,
           max_doc_len: int | None) -> SplitData:
    """One split's arrays, cut to the first `max_questions`, with document lengths cut to `max_doc_len`."""
    count = len(arrays[f"{split}_answer"])
    if max_questions is not None:
        count = min(count, max_questions)
    doc_index = arrays[f"{split}_doc_index"][:count]
    doc_offsets = arrays[f"{split}_doc_offsets"]
    query_offsets = arrays[f"{split}_query_offsets"]
    lengths = np.diff(doc_offsets)[doc_index] if count else np.zeros(0, dtype=np.int64)
    if max_doc_len is not None:
        lengths = np.minimum(lengths, max_doc_len)
    return SplitData(arrays[f"{split}_doc_tokens"], doc_offsets, doc_index, arrays[f"{split}_query_tokens"],
                     query_offsets, arrays[f"{split}_answer"][:count], arrays[f"{split}_answerable"][:count],
                     lengths.astype(np.int64), np.diff(query_offsets)[:count].astype(np.int64))


def _holds_questions(archive: Path, members: int = 2000) -> bool:
    """Whether the first `members` entries of an archive include a questions/<split>/*.question file."""
    try:
        with tarfile.open(archive, "r|*") as tar:
            for count, member in enumerate(tar):
                if member.name.endswith(".question") and "/questions/" in f"/{member.name}":
                    return True
                if count >= members:
                    return False
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return False
    return False
