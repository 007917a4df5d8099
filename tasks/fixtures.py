"""Writers of small files in each real format the task loaders read: IDX gzip, PTB character
text, simple-examples.tgz, text8.zip. Tests build their fixture data sets with these; they also
let a user try a task's data path end to end without a download.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from tasks.mnist import FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file's bytes: magic 0x00000800 + ndim, big-endian sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    """Write `array` as a gzip-compressed IDX file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(idx_bytes(array))
    return path


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (count, 28, 28) whose class is readable from them (a bright row at 2 * label), and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    images[np.arange(count), 2 * labels + 4, :] = 255
    return images, labels.astype(np.uint8)


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """The four MNIST IDX gzip files with `n_train` + `n_test` images."""
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_digits(count, seed * 2 + offset)
        write_idx_gz(folder / FILES[split][0], images)
        write_idx_gz(folder / FILES[split][1], labels)
    return folder


def ptb_text(lines: int, seed: int) -> str:
    """PTB character text: symbols separated by spaces, one sentence a line (Mikolov's layout)."""
    rng = np.random.default_rng(seed)
    words = "the cat sat on mat a of dollars prices rose in <unk> N $ 's 4.5 #1 z-x".split()
    out = []
    for _ in range(lines):
        sentence = "_".join(rng.choice(words, size=int(rng.integers(2, 9))))
        out.append(" " + " ".join(sentence) + " ")
    return "\n".join(out) + "\n"


def write_ptb(folder: Path, lines: tuple[int, int, int] = (60, 12, 14), seed: int = 0) -> Path:
    """ptb.char.{train,valid,test}.txt with the given number of lines each."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (split, count) in enumerate(zip(("train", "valid", "test"), lines)):
        (folder / f"ptb.char.{split}.txt").write_text(ptb_text(count, seed * 3 + index))
    return folder


def write_ptb_archive(path: Path, source: Path) -> Path:
    """A simple-examples.tgz holding `source`'s three files under simple-examples/data/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "valid", "test"):
            name = f"ptb.char.{split}.txt"
            tar.add(source / name, arcname=f"./simple-examples/data/{name}")
        info = tarfile.TarInfo("./simple-examples/README")
        data = b"fixture\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def text8_text(length: int, seed: int) -> bytes:
    """`length` characters of a-z and single spaces, like text8."""
    rng = np.random.default_rng(seed)
    words = [b"the", b"of", b"and", b"anarchism", b"originated", b"as", b"a", b"term", b"abuse", b"zero"]
    out = bytearray()
    while len(out) < length:
        out += b" " + words[int(rng.integers(len(words)))]
    return bytes(out[:length])


def write_text8(path: Path, length: int = 4000, seed: int = 0, member: str = "text8") -> Path:
    """A text8.zip whose member `member` holds `length` characters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, text8_text(length, seed))
    return path
