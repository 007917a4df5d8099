"""The atomic Parquet writer when the disk fails it: no temporary file left, the earlier table intact."""

from __future__ import annotations

import errno

import pytest

from suite.core import results
from suite.core.results import CURVE, read_table, to_table, write_table

ROW = {"study": "s", "trial_id": "t", "task": "adding", "variant": "lstm", "seed": 0, "step": 1, "split": "valid",
       "metric": "mse", "value": 0.5, "loss": 0.5, "stats_mode": "none", "train_seconds": 1.0, "examples": 10}


def test_a_failed_write_leaves_the_old_table_and_no_temporary_file(tmp_path, monkeypatch):
    write_table(to_table([ROW], CURVE), str(tmp_path), "curve", "t")

    def full(table, where, filesystem):
        with filesystem.open_output_stream(where) as fh:
            fh.write(b"PAR1 half a file")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.pq, "write_table", full)
    with pytest.raises(OSError, match="No space left"):
        write_table(to_table([ROW, dict(ROW, step=2)], CURVE), str(tmp_path), "curve", "t")
    assert [p.name for p in (tmp_path / "curve").iterdir()] == ["t.parquet"]
    assert read_table(str(tmp_path), "curve")["step"].to_pylist() == [1]


def test_a_truncated_tune_state_is_moved_aside(tmp_path):
    """A full disk can cut Tune's experiment state short; --resume then starts a fresh Tuner (runners.local)."""
    from runners.local import reopen_failed

    (tmp_path / "experiment_state-2026-12-02_01-00-00.json").write_text('{"trial_data": [["{\\"status\\": \\"TERM')
    assert reopen_failed(str(tmp_path)) is None
    assert [p.name for p in tmp_path.iterdir()] == ["experiment_state-2026-12-02_01-00-00.json.damaged"]
    assert reopen_failed(str(tmp_path / "missing")) == []
