"""`text8`: character-level text8 (Cooijmans et al. 2016, Section 5.3), bits per character.

text8.zip holds one member, `text8`: 100,000,000 characters of a-z and space in one line
(Mahoney's cleaned Wikipedia). The splits are the first 90%, next 5% and last 5%
(90M / 5M / 5M), the symbols the 27 characters. The archive's size is checked (no md5 is
published with it); in the suite's own folder the content must also be exactly 100M characters.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from suite.core.errors import DataError
from tasks.base import register
from tasks.charlm import CharLMOptions, CharLMTask, encode, lookup_table
from tasks.data import Fetch, Remote, download, first_complete, verify

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
ZIP = Remote("text8.zip", ("http://mattmahoney.net/dc/text8.zip",), size=31_344_016)
MEMBER = "text8"
FULL_LENGTH = 100_000_000
TABLE = lookup_table(ALPHABET)


@dataclass(frozen=True)
class Text8Options(CharLMOptions):
    """As CharLMOptions, with the paper's segment length of 180."""

    length: int = 180


def read_text8(path: Path) -> np.ndarray:
    """Symbol ids of the `text8` member of a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            if MEMBER not in archive.namelist():
                raise DataError(f"{path}: the archive has no member {MEMBER!r} (found {archive.namelist()[:5]})")
            raw = archive.read(MEMBER)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc}); delete it and fetch it again") from None
    ids = encode(raw, TABLE, f"{path}:{MEMBER}")
    if len(ids) < 20:
        raise DataError(f"{path}: {MEMBER} holds only {len(ids)} characters")
    return ids


def split_text8(ids: np.ndarray) -> dict[str, np.ndarray]:
    """First 90%, next 5%, last 5%: exactly 90M / 5M / 5M of the real corpus."""
    n_train, n_valid = len(ids) * 9 // 10, len(ids) // 20
    return {"train": ids[:n_train], "valid": ids[n_train:n_train + n_valid], "test": ids[n_train + n_valid:]}


@register
class Text8(CharLMTask):
    """Next-character prediction on text8, 27 symbols."""

    name = "text8"
    description = "text8 characters, 27 symbols, 90M/5M/5M, segments of 180, bits per character"
    alphabet = ALPHABET
    folder = "text8"
    source_names = (ZIP.name,)
    Options = Text8Options
    # The paper's text8 settings; steps and eval_every are the suite's choice.
    defaults = {"model": {"hidden_size": 2000}, "optim": {"name": "adam", "lr": 1e-3, "clip": 1.0},
                "train": {"batch_size": 128, "steps": 100_000, "eval_every": 1000}}

    def fetch(self, fetch: Fetch | None = None) -> None:
        """Download text8.zip (size checked) unless a copy is found."""
        if first_complete(self.places(), self.source_names) is not None:
            return
        if self.data_path:
            raise self.missing()
        download(ZIP, self.managed_dir(), fetch)

    def parse(self, folder: Path) -> dict[str, np.ndarray]:
        """The three splits of the corpus; the suite's own copy must be the canonical one."""
        path = folder / ZIP.name
        canonical = folder == self.managed_dir()
        if canonical:
            verify(path, ZIP)
        ids = read_text8(path)
        if canonical and len(ids) != FULL_LENGTH:
            raise DataError(f"{path}: {MEMBER} holds {len(ids)} characters, expected {FULL_LENGTH}")
        return split_text8(ids)
