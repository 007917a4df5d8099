"""A saved run, ready to evaluate again: find its model file, rebuild its task and model, load it.

Used by `suite evaluate` and `suite diagnose bn-inference`. A target is a model file
(`.../models/<trial>/best.pt`), a trial's model folder (`.../models/<trial>`), a trial id
looked up under a results or study directory (`<dir>/models/<trial>`), or, for the
diagnostics, a study directory (its first BN trial). The model is rebuilt from the config
saved in the file; when the trial's summary row is there too, its recorded task and model
config must agree with the file's, or loading is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from suite.core import checkpoints
from suite.core.cells.norms import batch_norms
from suite.core.config import RunConfig
from tasks.resolve import resolve
from suite.core.errors import SuiteError
from suite.core.results import read_trial_row
from tasks.base import create

# Keys of a recorded config that are facts about the run, not settings `resolve` takes.
RECORDED_ONLY = ("task_facts", "grid")


@dataclass
class SavedRun:
    """A loaded model with everything needed to evaluate it."""

    path: str
    trial_id: str
    checkpoint: str
    step: int
    config: RunConfig
    task: Any
    model: torch.nn.Module


def locate(target: str, results: str | None, checkpoint: str) -> tuple[str, str, Path | None]:
    """(model file, trial id, results root or None) for a target (module doc)."""
    path = Path(target)
    if path.suffix == ".pt":
        return str(path), path.parent.name, path.parent.parent.parent
    if path.is_dir() and path.parent.name == "models":
        return str(path / f"{checkpoint}.pt"), path.name, path.parent.parent
    if path.is_dir() and (path / "models").is_dir():
        trials = sorted(p.name for p in (path / "models").iterdir() if (p / f"{checkpoint}.pt").is_file())
        bn = [t for t in trials if _has_batch_norm(path, t)]
        if not bn:
            raise SuiteError(f"{path}: no saved model of a batch-normalized run under {path / 'models'}; "
                             f"pass a trial id or a model file")
        return str(path / "models" / bn[0] / f"{checkpoint}.pt"), bn[0], path
    root = Path(results) if results else Path(".")
    file = root / "models" / target / f"{checkpoint}.pt"
    if not file.is_file():
        known = sorted(p.name for p in (root / "models").iterdir()) if (root / "models").is_dir() else []
        hint = f"saved trials there: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}" if known else \
            "it holds no saved models"
        raise SuiteError(f"no saved model {file} ({hint}); pass a model file, a models/<trial> folder, or "
                         f"--results DIR with a trial id")
    return str(file), target, root


def _has_batch_norm(root: Path, trial_id: str) -> bool:
    """Whether the trial's summary records a BN statistics mode (variants without BN record "none")."""
    row = read_trial_row(str(root), "summary", trial_id) if (root / "summary").is_dir() else None
    return row is not None and row.get("stats_mode") not in (None, "none")


def run_config(recorded: dict[str, Any], data_dir: str | None) -> RunConfig:
    """The RunConfig of a recorded config; `data_dir` replaces where the data is looked for."""
    raw = {k: v for k, v in recorded.items() if k not in RECORDED_ONLY}
    if data_dir:
        raw["data"] = {"dir": data_dir, "path": None}
    raw["train"] = dict(raw.get("train", {}), device="cpu" if not torch.cuda.is_available() else "auto")
    return resolve(raw, "config saved with the model")


def load(target: str, results: str | None = None, checkpoint: str = "best", data_dir: str | None = None) -> SavedRun:
    """Locate, check and load a saved model (SuiteError with one line when anything is off)."""
    path, trial_id, root = locate(target, results, checkpoint)
    payload = checkpoints.read_model(path)
    recorded = checkpoints.file_config(payload)
    if root is not None and (root / "summary").is_dir():
        row = read_trial_row(str(root), "summary", trial_id)
        if row is not None and row.get("config_json"):
            summary_config = json.loads(row["config_json"])
            for section in checkpoints.MATCHED_SECTIONS:
                if summary_config.get(section) != recorded.get(section):
                    raise SuiteError(f"{path}: its [{section}] config differs from the one in "
                                     f"{root}/summary/{trial_id}.parquet; the file belongs to another run")
    config = run_config(recorded, data_dir)
    task = create(config.task.name, config.task.options, config.data.dir, config.data.path)
    task.prepare()
    model = task.build_model(config.model)
    # The config as this code resolves it must still be the one the model was saved with.
    checkpoints.load_into(model, payload, path, config.to_dict())
    return SavedRun(path, trial_id, checkpoint, int(payload["step"]), config, task, model)


def require_batch_norm(run: SavedRun, what: str) -> None:
    """SuiteError unless the saved model has batch norms."""
    if not batch_norms(run.model):
        raise SuiteError(f"{run.path}: variant {run.config.model.variant} has no batch norm; {what} needs a BN "
                         f"variant (bn_lstm, bn_vertical)")
