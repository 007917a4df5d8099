"""Device names and availability (suite.core.device): one clear line before anything runs (issue 14)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from suite import cli
from suite.core import device
from tasks.resolve import load_run_config
from suite.core.errors import ConfigError
from tests.conftest import ROOT


def fake_cuda(monkeypatch, built: bool, count: int) -> None:
    """Make this process's torch look built with (or without) CUDA and `count` visible devices."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "", "mps:1", "cuda 0", "tpu:0"])
def test_garbage_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="is not a device; use auto, cpu, cuda, cuda:N or mps"):
        load_run_config(overrides=[f'train.device="{name}"'])


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_good_names_resolve(name):
    assert load_run_config(overrides=[f'train.device="{name}"']).train.device == name


def test_cuda_on_a_torch_built_without_it(monkeypatch):
    fake_cuda(monkeypatch, built=False, count=0)
    with pytest.raises(ConfigError, match="built without CUDA; use train.device = cpu"):
        device.check_available("cuda")


def test_cuda_without_a_visible_device(monkeypatch):
    fake_cuda(monkeypatch, built=True, count=0)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        device.check_available("cuda:0")


def test_cuda_index_out_of_range(monkeypatch):
    fake_cuda(monkeypatch, built=True, count=2)
    device.check_available("cuda:1")
    with pytest.raises(ConfigError, match=r"sees 2 CUDA device\(s\), cuda:0 to cuda:1; use one of those"):
        device.check_available("cuda:7")


def test_mps_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS .* is not available here"):
        device.check_available("mps")


def test_auto_and_cpu_always_work(monkeypatch):
    fake_cuda(monkeypatch, built=False, count=0)
    assert device.pick_device("auto") == torch.device("cpu")
    assert device.pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="needs a CPU-only torch")
@pytest.mark.parametrize(("name", "message"), [
    ("cuda", "is built without CUDA; use train.device = cpu (or auto)"),
    ("cuda:7", "is built without CUDA"),
    ("gpu", "'gpu' is not a device"),
])
def test_suite_train_refuses_in_one_line(tmp_path, name, message):
    """The real CLI on this machine's CPU-only torch: exit 2, one line, no traceback."""
    done = subprocess.run([sys.executable, "-m", "suite", "train", "--task", "adding", "--variant", "lstm",
                           "--set", f'train.device="{name}"', "--results", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


STUDY = """
name = "dev"
variants = ["lstm"]
seeds = [0]

[config]
model.hidden_size = 8
train = {{ steps = 4, eval_every = 2, batch_size = 10, device = "{device}" }}

[tasks.adding]
task = {{ length = 6, train_size = 40, eval_size = 20 }}

[resources]
gpu = {gpu}
"""


@pytest.mark.parametrize(("name", "gpu", "address", "message"), [
    ("cuda", 0, None, "[resources] gpu = 0 gives trials no GPU"),
    ("cuda:1", 1, "127.0.0.1:1", "each trial sees only its 1 GPU(s), numbered from cuda:0"),
    ("cuda:0", 1, None, "is built without CUDA"),  # checked against this machine: trials run here
    ("gpu", 0, None, "'gpu' is not a device"),
])
def test_study_refuses_before_any_trial(tmp_path, capsys, monkeypatch, name, gpu, address, message):
    fake_cuda(monkeypatch, built=False, count=0)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(STUDY.format(device=name, gpu=gpu)))
    args = ["run", str(path), "--results", str(tmp_path / "res"), "--dry-run"]
    assert cli.main(args + (["--address", address] if address else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert cli.main(args[:-1] + (["--address", address] if address else [])) == 2  # a real run too, before Ray
    assert not (tmp_path / "res").exists()


def test_cluster_study_with_gpus_passes_the_dry_run(tmp_path, capsys, monkeypatch):
    """With --address the trials run elsewhere: this machine's missing CUDA is no reason to refuse."""
    fake_cuda(monkeypatch, built=False, count=0)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(STUDY.format(device="cuda", gpu=1)))
    assert cli.main(["run", str(path), "--results", str(tmp_path / "res"), "--dry-run",
                     "--address", "127.0.0.1:1"]) == 0
