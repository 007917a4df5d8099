"""`ptb_char`: character-level Penn Treebank (Cooijmans et al. 2016, Section 5.2), bits per character.

Mikolov's ptb.char.{train,valid,test}.txt: one sentence a line, symbols separated by spaces,
`_` between words. The 50 symbols are the 49 characters that occur plus the end of a line;
spaces are separators, not symbols. `suite data prepare ptb_char` fetches simple-examples.tgz
(md5 checked), extracts the three files and removes the archive.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from suite.core.errors import DataError
from tasks.base import register
from tasks.charlm import SPLITS, CharLMOptions, CharLMTask, encode, lookup_table
from tasks.data import Fetch, Remote, download, first_complete, verify

# Symbol 0 is the end of a line ("\n"); then punctuation, digits, <unk>'s brackets, N, \, _, a-z.
ALPHABET = "\n#$&'*-./0123456789<>N\\_abcdefghijklmnopqrstuvwxyz"
FILE_NAMES = tuple(f"ptb.char.{split}.txt" for split in SPLITS)
ARCHIVE = Remote("simple-examples.tgz", ("http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",),
                 md5="30177ea32e27c525793142b6bf2c8e2d")
# Known md5s of the extracted files (the training split's is not published with the suite).
KNOWN = {"ptb.char.valid.txt": Remote("ptb.char.valid.txt", (), md5="9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
         "ptb.char.test.txt": Remote("ptb.char.test.txt", (), md5="1f9a2d1afe00f76e8bfbe09a65439681")}
SKIP = 254  # spaces separate symbols; they are dropped after the check, so error offsets are file offsets
TABLE = lookup_table(ALPHABET, {ord(" "): SKIP})


def read_ptb(path: Path) -> np.ndarray:
    """Symbol ids of one ptb.char file: spaces dropped, each line's end a symbol."""
    try:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    ids = encode(raw, TABLE, str(path))
    ids = ids[ids != SKIP]
    if len(ids) < 2:
        raise DataError(f"{path}: holds fewer than two symbols; not a PTB character file")
    return ids


def extract(archive: Path, folder: Path) -> None:
    """Pull data/ptb.char.*.txt out of simple-examples.tgz, each via a temporary name."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parent.name == "data" and Path(m.name).name in FILE_NAMES}
            missing = [name for name in FILE_NAMES if name not in members]
            if missing:
                raise DataError(f"{archive}: no {', '.join(missing)} inside; not Mikolov's simple-examples.tgz")
            for name in FILE_NAMES:
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out, tar.extractfile(members[name]) as src:
                        out.write(src.read())
                    os.replace(tmp, folder / name)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable tar.gz archive ({exc})") from None


@register
class PTBChar(CharLMTask):
    """Next-character prediction on Penn Treebank, 50 symbols."""

    name = "ptb_char"
    description = "Penn Treebank characters, 50 symbols, segments of 100, bits per character"
    alphabet = ALPHABET
    folder = "ptb_char"
    source_names = FILE_NAMES
    Options = CharLMOptions
    # The paper's PTB settings; steps and eval_every are the suite's choice (about 25 epochs).
    defaults = {"model": {"hidden_size": 1000},
                "optim": {"name": "adam", "lr": 2e-3, "clip": 1.0},
                "train": {"batch_size": 64, "steps": 20_000, "eval_every": 500}}

    def fetch(self, fetch: Fetch | None = None) -> None:
        """Download simple-examples.tgz, check its md5, extract the three files, drop the archive."""
        if first_complete(self.places(), FILE_NAMES) is not None:
            return
        if self.data_path:
            raise self.missing()
        folder = self.managed_dir()
        archive = download(ARCHIVE, folder, fetch)
        extract(archive, folder)
        archive.unlink()

    def parse(self, folder: Path) -> dict[str, np.ndarray]:
        """Symbol ids of the three splits; files in the suite's own folder are checked against known md5s."""
        if folder == self.managed_dir():
            for name, remote in KNOWN.items():
                verify(folder / name, remote)
        return {split: read_ptb(folder / f"ptb.char.{split}.txt") for split in SPLITS}
