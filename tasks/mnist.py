"""Sequential MNIST (Le et al. 2015; Cooijmans et al. 2016, Section 5.1): 784 pixels one at a time.

Reads the standard IDX gzip files. Train/valid are the first 50k / last 10k of the training
set, test is t10k. `pool = k` average-pools k x k blocks first, for quick CPU runs.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from suite.errors import ConfigError, DataError
from tasks.base import Batch, Task, register

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TRAIN_SIZE = 50_000


@dataclass(frozen=True)
class MNISTOptions:
    """Downsampling factor (1 keeps 784 steps; 4 gives 7x7 = 49 steps)."""

    pool: int = 1


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a uint8 array, checking magic number and sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); delete it and fetch it again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    dims = data[3]
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@register
class SequentialMNIST(Task):
    """Classify a digit from its pixels read in scan-line order."""

    name = "smnist"
    description = "sequential MNIST, 784 steps, 10 classes"
    metric = "accuracy"
    mode = "max"
    Options = MNISTOptions
    defaults = {"model": {"hidden_size": 100}, "optim": {"name": "rmsprop", "lr": 1e-3, "clip": 1.0},
                "train": {"batch_size": 100, "steps": 50_000, "eval_every": 500}}
    folder = "mnist"

    def __init__(self, options: MNISTOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        if options.pool < 1 or 28 % options.pool:
            raise ConfigError(f"{self.name}: pool must divide 28, got {options.pool}")
        side = 28 // options.pool
        self.input_size, self.output_size, self.seq_len = 1, 10, side * side
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def files_dir(self) -> Path:
        """Where the IDX files are looked for."""
        return self.data_path or (self.data_dir / self.folder)

    def prepare(self) -> None:
        """Check that the IDX files are present."""
        folder = self.files_dir()
        missing = [name for pair in FILES.values() for name in pair if not (folder / name).exists()]
        if missing:
            raise DataError(f"{self.name}: missing {', '.join(missing)} in {folder}; put the MNIST IDX files "
                            f"there or point to them with --set data.path=DIR")

    def _load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._data is None:
            self.prepare()
            folder = self.files_dir()
            raw = {}
            for split, (images, labels) in FILES.items():
                x, y = read_idx(folder / images), read_idx(folder / labels)
                if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                    raise DataError(f"{folder}: {images} and {labels} do not match ({x.shape} vs {y.shape})")
                raw[split] = (torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)))
            train_x, train_y = raw["train"]
            self._data = {"train": (train_x[:TRAIN_SIZE], train_y[:TRAIN_SIZE]),
                          "valid": (train_x[TRAIN_SIZE:], train_y[TRAIN_SIZE:]), "test": raw["test"]}
        return self._data

    def sequences(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 28, 28) -> float pixel sequences (N, T, 1) in [0, 1]."""
        x = images.float().div_(255.0)
        if self.options.pool > 1:
            x = F.avg_pool2d(x.unsqueeze(1), self.options.pool).squeeze(1)
        return x.reshape(len(x), -1, 1)

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Shuffled batches for train, in order for valid and test."""
        images, labels = self._load()[split]
        order = torch.arange(len(labels))
        if split == "train":
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield Batch(self.sequences(images[idx]).transpose(0, 1), labels[idx])
