"""Saved models: a run's state at the best validation step and at the last step, with its config.

Layout beside the result tables: `<root>/models/<trial_id>/<which>.pt` (`which` is "best" or
"last"), written through the same pyarrow filesystems as the tables (a local path, NFS, or
s3:// / gs://), under a temporary name and renamed, so a crash never leaves a half file.

A file is a weights-only `torch.save` of plain data (never an arbitrary pickle; it is read
back with `torch.load(weights_only=True)`): the format tag, the resolved config as JSON,
the training step, the state dict, and a SHA-256 digest of every tensor's bytes. Loading
refuses, with one line naming the file and the fix, a file that is not a model, one whose
digest no longer matches (corrupted), and one whose config or tensors do not match the
model it is loaded into.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs
import torch

from suite.core.errors import SuiteError
from suite.core.results import filesystem

FORMAT = "recnorm-model"
VERSION = 1
CHECKPOINTS = ("best", "last")
# Config sections that must agree between a file and the model it is loaded into; train/data/optim may differ.
MATCHED_SECTIONS = ("task", "model")


def model_path(root: str, trial_id: str, which: str) -> str:
    """Where a trial's `which` model lives under a results location (a path or a URI)."""
    return f"{root.rstrip('/')}/models/{trial_id}/{which}.pt"


def digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(root: str, trial_id: str, which: str, state: Mapping[str, torch.Tensor],
               config: Mapping[str, Any], step: int | None) -> str:
    """Write one model file atomically; returns its path."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
    state = {k: v.detach().cpu() for k, v in state.items()}
    payload = {"format": FORMAT, "version": VERSION, "config_json": json.dumps(config, sort_keys=True),
               "step": -1 if step is None else int(step), "digest": digest(state), "state": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fs, base = filesystem(root)
    folder = f"{base}/models/{trial_id}"
    fs.create_dir(folder, recursive=True)
    temp = f"{folder}/.{which}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(temp) as out:
        out.write(buffer.getvalue())
    final = f"{folder}/{which}.pt"
    fs.move(temp, final)
    return final


def save_models(root: str, trial_id: str, models: Mapping[str, Mapping[str, torch.Tensor]],
                config: Mapping[str, Any], steps: Mapping[str, int | None]) -> list[str]:
    """Save every state of `models` ("best", "last") of one trial; returns the paths written."""
    return [save_model(root, trial_id, which, models[which], config, steps.get(which))
            for which in CHECKPOINTS if which in models]


def read_model(path: str) -> dict[str, Any]:
    """The checked payload of one model file: format, version, digest (SuiteError otherwise)."""
    fs, local = filesystem(path)
    try:
        with fs.open_input_file(local) as fh:
            data = fh.read()
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such model file; the run saved none (trained before models were kept?)") \
            from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the model file ({exc})") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise SuiteError(f"{path}: corrupted or not a model file ({first}); retrain the run or restore the "
                         f"file") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SuiteError(f"{path}: not a recnorm-suite model file; pass a file under <results>/models/")
    if payload.get("version") != VERSION:
        raise SuiteError(f"{path}: model file version {payload.get('version')}, this suite reads version {VERSION}")
    state = payload.get("state")
    if not isinstance(state, dict) or digest(state) != payload.get("digest"):
        raise SuiteError(f"{path}: corrupted model file (its tensors do not match the digest saved with them); "
                         f"retrain the run or restore the file")
    return payload


def file_config(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config saved with a model."""
    return json.loads(payload["config_json"])


def load_into(model: torch.nn.Module, payload: Mapping[str, Any], path: str,
              config: Mapping[str, Any] | None = None) -> None:
    """Load a checked payload into `model`. With `config` (the config `model` was built from), refuse a
    file whose task or model section differs; always refuse missing, extra or differently shaped tensors."""
    if config is not None:
        saved = file_config(payload)
        for section in MATCHED_SECTIONS:
            mine, theirs = config.get(section), saved.get(section)
            if mine != theirs:
                keys = sorted(k for k in set(mine or {}) | set(theirs or {})
                              if (mine or {}).get(k) != (theirs or {}).get(k))
                raise SuiteError(f"{path}: saved for a different [{section}] config (differs in "
                                 f"{', '.join(keys) or section}); load it with the config saved in the file")
    state = payload["state"]
    own = model.state_dict()
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or extra or shapes:
        parts = [f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing", missing), ("unexpected", extra), ("other shape", shapes)) if names]
        raise SuiteError(f"{path}: does not match the model ({'; '.join(parts)}); it was saved for another "
                         f"variant or size")
    model.load_state_dict(state)


def exists(path: str) -> bool:
    """Whether a model file is present."""
    fs, local = filesystem(path)
    return fs.get_file_info(local).type == pafs.FileType.File
