"""The DeepMind Q&A `cnn` questions (Hermann et al. 2015): parsing, the top-k sentence filter, the token cache.

Each `questions/{training,validation,test}/*.question` file holds, separated by blank lines:
the article URL, the context (tokenized, lower-cased, entities replaced by `@entityN`), the
question with one `@placeholder`, the answer entity, then one `@entityN:name` line per
entity. Files are read either from a folder in that layout or, streamed, straight from the
`cnn.tgz` archive (no need to unpack 380k small files).

The cache is built once: every file is parsed and checked (a malformed file is reported
with its path and skipped, or the whole build stops, per `on_error`); identical contexts
(an article has about four questions) are stored once; the vocabulary is the training
split's words by frequency, capped, with `@placeholder` and every `@entityN` kept as
their own tokens. Arrays per split (`.npy`, via `tasks.data.SplitCache`, so nothing
half-written ever becomes visible): document tokens with offsets, question tokens with
offsets, each question's document and answer (and whether the answer is in the document). Token ids: 0 padding, 1 unknown,
2 `@placeholder`, 3 + N for `@entityN`, then words by decreasing training frequency.

The cache is keyed by the archive's size and modification time, or by those of the three split
folders, which change when files are added, removed or renamed (not when one is edited in
place: delete the cache directory then).

`top_sentences = k` keeps, per question, the k context sentences that share the most
distinct words with the question, in document order (the paper's "top-4" variant of the
task, Cooijmans et al. 2016, Section 5.4 and Appendix C); the answer may then be absent.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from suite.core.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_DIRS = {"train": "training", "valid": "validation", "test": "test"}
PAD, UNK, PLACEHOLDER = 0, 1, 2
ENTITY0 = 3  # token id of @entity0
SPECIALS = ("<pad>", "<unk>", "@placeholder")
SENTENCE_ENDS = frozenset({".", "!", "?"})
ON_ERROR = ("skip", "raise")
_ENTITY = re.compile(r"@entity(\d+)")
_ENTITY_LINE = re.compile(r"@entity(\d+):")
_MEMBER = re.compile(r"(?:^|/)questions/(training|validation|test)/([^/]+\.question)$")


class MalformedQuestion(ValueError):
    """A `.question` file that does not follow the layout; the message says what is wrong."""


@dataclass(frozen=True)
class Question:
    """One parsed file: context and question tokens, the answer's entity number, the entity names."""

    url: str
    context: list[str]
    query: list[str]
    answer: int
    entities: dict[int, str]


def parse_question(text: str) -> Question:
    """Parse the text of one `.question` file; MalformedQuestion says what breaks the layout."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 9:
        raise MalformedQuestion(f"{len(lines)} lines, expected at least 9 (URL, context, question, answer, "
                                f"entities, separated by blank lines)")
    for index in (1, 3, 5, 7):
        if lines[index].strip():
            raise MalformedQuestion(f"line {index + 1} should be blank")
    url, context, query, answer = lines[0].strip(), lines[2].split(), lines[4].split(), lines[6].strip()
    if not url:
        raise MalformedQuestion("line 1 (the URL) is empty")
    if not context:
        raise MalformedQuestion("line 3 (the context) is empty")
    if query.count("@placeholder") != 1:
        raise MalformedQuestion(f"line 5 (the question) has {query.count('@placeholder')} @placeholder, expected 1")
    match = _ENTITY.fullmatch(answer)
    if not match:
        raise MalformedQuestion(f"line 7 (the answer) is {answer[:40]!r}, not an @entityN")
    entities: dict[int, str] = {}
    for number, line in enumerate(lines[8:], start=9):
        head = _ENTITY_LINE.match(line)
        if not head:
            raise MalformedQuestion(f"line {number} is {line[:40]!r}, not an @entityN:name line")
        entities[int(head.group(1))] = line[head.end():]
    number = int(match.group(1))
    if number not in entities:
        raise MalformedQuestion(f"the answer {answer} is not among the entity lines")
    if answer not in context:
        raise MalformedQuestion(f"the answer {answer} does not occur in the context")
    return Question(url, context, query, number, entities)


def top_sentences(context: list[str], query: list[str], k: int) -> list[str]:
    """The k sentences sharing the most distinct words with the question, in document order.

    Sentences end at `.`, `!` or `?` tokens; ties go to the earlier sentence.
    """
    sentences, start = [], 0
    for index, token in enumerate(context):
        if token in SENTENCE_ENDS:
            sentences.append(context[start:index + 1])
            start = index + 1
    if start < len(context):
        sentences.append(context[start:])
    if len(sentences) <= k:
        return list(context)
    words = set(query) - {"@placeholder"}
    overlap = [len(words.intersection(sentence)) for sentence in sentences]
    keep = sorted(sorted(range(len(sentences)), key=lambda i: -overlap[i])[:k])
    return [token for i in keep for token in sentences[i]]


# -- sources -----------------------------------------------------------------------------------

def questions_root(path: Path) -> Path | None:
    """The folder holding training/, validation/ and test/ under `path` (itself, questions/ or cnn/questions/)."""
    for candidate in (path, path / "questions", path / "cnn" / "questions"):
        if all((candidate / SPLIT_DIRS[split]).is_dir() for split in SPLITS):
            return candidate
    return None


def source_paths(source: Path) -> list[Path]:
    """What the cache's fingerprint watches: the archive, or the three split folders."""
    if source.is_file():
        return [source]
    return [source / SPLIT_DIRS[split] for split in SPLITS]


def iter_folder(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, file name, path, bytes) of every `.question` file under a questions folder, sorted by name."""
    for split in SPLITS:
        folder = root / SPLIT_DIRS[split]
        for name in sorted(os.listdir(folder)):
            if name.endswith(".question"):
                path = folder / name
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise DataError(f"{path}: cannot read ({exc})") from None
                yield split, name, str(path), data


def iter_archive(archive: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, file name, archive:member, bytes) of every `.question` member, streamed in archive order."""
    splits = {directory: split for split, directory in SPLIT_DIRS.items()}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                match = _MEMBER.search(member.name)
                if not member.isfile() or not match:
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                yield splits[match.group(1)], match.group(2), f"{archive}:{member.name}", data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc}); delete it and fetch it again") from None


def iter_source(source: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Every question file of a source: a questions folder or a cnn.tgz archive."""
    return iter_archive(source) if source.is_file() else iter_folder(source)


# -- the cache -------------------------------------------------------------------------------

@dataclass
class _Split:
    docs: list[np.ndarray] = field(default_factory=list)  # provisional ids, one array per unique context
    doc_keys: dict[bytes, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    doc_of: list[int] = field(default_factory=list)
    queries: list[np.ndarray] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    answerable: list[bool] = field(default_factory=list)  # the answer survives the top-k filter


class CacheBuilder:
    """Parses files one at a time into provisional token ids; `finish()` fixes the vocabulary and returns the arrays."""

    def __init__(self, vocab_size: int, top_k: int = 0, on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.vocab_size, self.top_k, self.on_error = vocab_size, top_k, on_error
        self.words: list[str] = []
        self.ids: dict[str, int] = {}
        self.splits = {split: _Split() for split in SPLITS}
        self.skipped: list[str] = []
        self.max_entity = -1

    def _encode(self, tokens: list[str]) -> np.ndarray:
        ids, words, out = self.ids, self.words, []
        for token in tokens:
            index = ids.get(token)
            if index is None:
                index = ids[token] = len(words)
                words.append(token)
            out.append(index)
        return np.array(out, dtype=np.int32)

    def add(self, split: str, name: str, where: str, data: bytes) -> None:
        """Parse one file into `split`; a malformed one is recorded (skip) or raised as DataError (raise)."""
        try:
            question = parse_question(data.decode("utf-8"))
        except (UnicodeDecodeError, MalformedQuestion) as exc:
            reason = f"not UTF-8 text ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else str(exc)
            if self.on_error == "raise":
                raise DataError(f"{where}: malformed question file: {reason} "
                                f"(set task.on_error=\"skip\" to leave such files out)") from None
            self.skipped.append(f"{where}: {reason}")
            return
        context = question.context
        if self.top_k:
            context = top_sentences(context, question.query, self.top_k)
        part = self.splits[split]
        key = hashlib.blake2b(" ".join(context).encode(), digest_size=16).digest()
        doc = part.doc_keys.get(key)
        if doc is None:
            doc = part.doc_keys[key] = len(part.docs)
            part.docs.append(self._encode(context))
        part.names.append(name)
        part.doc_of.append(doc)
        part.queries.append(self._encode(question.query))
        part.answers.append(question.answer)
        part.answerable.append(f"@entity{question.answer}" in context)
        self.max_entity = max(self.max_entity, question.answer, max(question.entities))

    def _vocabulary(self) -> tuple[list[str], np.ndarray]:
        """Final words and the provisional -> final id map: specials, entities, then training words by frequency."""
        numbers = [int(m.group(1)) for m in map(_ENTITY.fullmatch, self.words) if m]
        self.max_entity = max([self.max_entity, *numbers])
        n_entities = self.max_entity + 1
        train = self.splits["train"]
        counts = np.zeros(len(self.words), dtype=np.int64)
        for arrays in (train.docs, train.queries):
            if arrays:
                counts += np.bincount(np.concatenate(arrays), minlength=len(self.words))
        remap = np.full(len(self.words), UNK, dtype=np.int32)
        ordinary = []
        for index, word in enumerate(self.words):
            match = _ENTITY.fullmatch(word)
            if match:
                remap[index] = ENTITY0 + int(match.group(1))
            elif word == "@placeholder":
                remap[index] = PLACEHOLDER
            elif counts[index] > 0:
                ordinary.append(index)
        ordinary.sort(key=lambda i: (-counts[i], self.words[i]))  # frequency, then the word: deterministic
        kept = ordinary[:self.vocab_size]
        first = ENTITY0 + n_entities
        remap[np.array(kept, dtype=np.int64)] = np.arange(first, first + len(kept), dtype=np.int32)
        words = list(SPECIALS) + [f"@entity{n}" for n in range(n_entities)] + [self.words[i] for i in kept]
        return words, remap

    def finish(self) -> dict[str, np.ndarray]:
        """The cache's arrays; questions sorted by file name and documents numbered by first use,
        so a folder and its archive give identical caches."""
        if not self.splits["train"].names:
            raise DataError("no well-formed training questions found" +
                            (f" ({len(self.skipped)} malformed files skipped, first: {self.skipped[0]})"
                             if self.skipped else ""))
        words, remap = self._vocabulary()  # sets max_entity from every entity token seen
        encoded = "\n".join(words).encode()
        arrays: dict[str, np.ndarray] = {
            "vocab": np.frombuffer(encoded, dtype=np.uint8),
            "entities": np.array([self.max_entity + 1], dtype=np.int64),
            "skipped": np.frombuffer("\n".join(self.skipped).encode(), dtype=np.uint8),
        }
        for split, part in self.splits.items():
            order = sorted(range(len(part.names)), key=part.names.__getitem__)
            renumber: dict[int, int] = {}
            for q in order:
                renumber.setdefault(part.doc_of[q], len(renumber))
            docs = [part.docs[d] for d in sorted(renumber, key=renumber.__getitem__)]
            queries = [part.queries[q] for q in order]
            arrays[f"{split}_doc_tokens"] = _remapped(docs, remap)
            arrays[f"{split}_doc_offsets"] = _offsets(docs)
            arrays[f"{split}_query_tokens"] = _remapped(queries, remap)
            arrays[f"{split}_query_offsets"] = _offsets(queries)
            arrays[f"{split}_doc_index"] = np.array([renumber[part.doc_of[q]] for q in order], dtype=np.int32)
            arrays[f"{split}_answer"] = np.array([part.answers[q] for q in order], dtype=np.int32)
            arrays[f"{split}_answerable"] = np.array([part.answerable[q] for q in order], dtype=np.bool_)
        return arrays


def _remapped(arrays: list[np.ndarray], remap: np.ndarray) -> np.ndarray:
    return remap[np.concatenate(arrays)] if arrays else np.zeros(0, dtype=np.int32)


def _offsets(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)]).astype(np.int64)


ARRAY_NAMES = ("vocab", "entities", "skipped") + tuple(
    f"{split}_{name}" for split in SPLITS
    for name in ("doc_tokens", "doc_offsets", "query_tokens", "query_offsets", "doc_index", "answer", "answerable"))


def build_cache(source: Path, vocab_size: int, top_k: int = 0, on_error: str = "skip") -> dict[str, np.ndarray]:
    """Parse every question file of `source` (folder or archive) into the cache's arrays."""
    builder = CacheBuilder(vocab_size, top_k, on_error)
    for split, name, where, data in iter_source(source):
        builder.add(split, name, where, data)
    return builder.finish()


# -- synthetic files in the real layout (tests, measurements, trying the task without a download) --

def synthetic_question(rng: np.random.Generator, sentences: int = 8, entities: int = 12) -> str:
    """The text of one answerable `.question` file: the question restates one context sentence."""
    verbs = "said met told visited praised joined left called beat signed".split()
    fillers = "the a in on of to with after before new old big city team club game year".split()
    pool = rng.choice(60, size=entities, replace=False)
    lines = []
    for _ in range(sentences):
        a, b = rng.choice(pool, size=2, replace=False)
        words = list(rng.choice(fillers, size=int(rng.integers(1, 5))))
        lines.append([f"@entity{a}", str(rng.choice(verbs)), f"@entity{b}", *words, "."])
    chosen = lines[int(rng.integers(len(lines)))]
    slot = int(rng.integers(2)) * 2
    answer = chosen[slot]
    query = list(chosen[:-1])
    query[slot] = "@placeholder"
    context = [token for sentence in lines for token in sentence]
    seen = sorted({int(t[7:]) for t in context if t.startswith("@entity")})
    names = "\n".join(f"@entity{n}:Person {n}" for n in seen)
    return (f"http://web.archive.org/web/2015/http://www.cnn.com/story/{rng.integers(1 << 40)}\n\n"
            f"{' '.join(context)}\n\n{' '.join(query)}\n\n{answer}\n\n{names}\n")


MALFORMED = {
    "empty.question": b"",
    "truncated.question": b"http://example.com/a\n\n@entity1 said @entity2 .\n\n",
    "no-placeholder.question": b"http://x\n\n@entity1 met @entity2 .\n\n@entity1 met someone\n\n@entity1\n\n@entity1:A\n",
    "answer-not-entity.question": b"http://x\n\n@entity1 met @entity2 .\n\n@placeholder met @entity2\n\nbob\n\n@entity1:A\n",
    "answer-absent.question":
        b"http://x\n\n@entity1 met @entity2 .\n\n@placeholder met @entity2\n\n@entity7\n\n@entity7:A\n@entity1:B\n",
    "bad-entity-line.question":
        b"http://x\n\n@entity1 met @entity2 .\n\n@placeholder met @entity2\n\n@entity1\n\n@entity1 = A\n",
    "not-utf8.question": b"http://x\n\n@entity1 \xff\xfe met .\n\n@placeholder met\n\n@entity1\n\n@entity1:A\n",
    "no-blank.question": b"http://x\n@entity1 met @entity2 .\n\n@placeholder met @entity2\n\n@entity1\n\n@entity1:A\n\n",
}


def write_questions(root: Path, counts: dict[str, int], seed: int = 0, malformed: bool = False,
                    sentences: int = 8) -> Path:
    """A `questions/{training,validation,test}/` folder of synthetic files (plus the malformed ones in training)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        folder = root / "questions" / SPLIT_DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            text = synthetic_question(rng, sentences=int(rng.integers(max(2, sentences // 2), sentences + 1)))
            digest = hashlib.sha1(f"{split}{index}{seed}".encode()).hexdigest()
            (folder / f"{digest}.question").write_text(text)
    if malformed:
        for name, data in MALFORMED.items():
            (root / "questions" / "training" / name).write_bytes(data)
    return root / "questions"


def write_archive(path: Path, root: Path) -> Path:
    """A cnn.tgz holding `root` (a questions folder) as cnn/questions/..., like the published archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="cnn/questions")
    return path
