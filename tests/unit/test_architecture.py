"""The layers hold: runners and reports are independent siblings joined by the CLI."""

from __future__ import annotations

from runners import local
from runners.local import StudyRun
from suite.cli import main as cli
from tests.unit.report_fixtures import write_study


def test_run_command_writes_the_report_the_runner_asks_for(tmp_path, monkeypatch, capsys):
    """`suite run` renders the report itself (runners never import reports or the CLI)."""
    study = write_study(tmp_path)
    target = tmp_path / "out" / "report.md"
    target.parent.mkdir()
    monkeypatch.setattr(local, "run_study", lambda *args: StudyRun(1, str(study), str(target)))
    assert cli(["run", "unused.toml", "--results", str(tmp_path)]) == 1  # the runner's code passes through
    assert target.read_text().startswith("# ")
    assert f"report written to {target}" in capsys.readouterr().out


def test_run_command_without_a_report_writes_none(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "run_study", lambda *args: StudyRun(130, str(tmp_path)))
    assert cli(["run", "unused.toml", "--results", str(tmp_path)]) == 130
    assert not list(tmp_path.glob("*.md"))
