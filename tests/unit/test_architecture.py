"""The layers hold (ARCHITECTURE.md): import-linter's contracts in pyproject.toml, and the CLI joining
runners and reports, which are independent siblings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runners import local
from runners.local import StudyRun
from suite.cli import main as cli
from suite.core.errors import ConfigError
from tests.unit.report_fixtures import write_study

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("suite", "tasks", "runners", "reports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root` (its pyproject.toml's contracts), without a cache."""
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(script), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, bad_import, broken", [
    ("suite/core/errors.py", "from tasks import base", "suite.core is not allowed to import tasks"),
    # function-local imports count (the lazy ones that used to hide a cycle)
    ("suite/core/results.py", "def _f():\n    import ray", "suite.core is not allowed to import ray"),
    ("reports/stats.py", "import torch", "reports is not allowed to import torch"),
    ("runners/progress.py", "import reports.stats", "runners is not allowed to import reports"),
    ("reports/cost.py", "import runners.study", "reports is not allowed to import runners"),
    ("tasks/data.py", "import runners.study", "tasks is not allowed to import runners"),
    ("runners/study.py", "import suite.cli", "runners is not allowed to import suite.cli"),
])
def test_a_bad_import_breaks_a_contract(tmp_path, module, bad_import, broken):
    """The check can fail: a copy of the packages with one import against the layers is refused."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as fh:
        fh.write(f"\n\n{bad_import}  # deliberately against the layers\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout


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


HEAVY = ("torch", "ray", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["tasks"], ["run", "--help"], ["bench", "--help"]])
def test_help_and_task_listing_import_no_heavy_library(argv):
    """`suite --help` and `suite tasks` stay fast (README: under 0.5 s): no torch, Ray or pyarrow on the way."""
    code = ("import sys\nfrom suite.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in %r if m in sys.modules))" % (argv, HEAVY))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_task_catalog_agrees_with_the_classes(monkeypatch):
    """`suite tasks` lists from tasks/catalog.py; the registry refuses a built-in whose class disagrees."""
    from tasks import base, catalog

    for name, cls in base.registry().items():
        if name in catalog.BUILTIN:
            listing = catalog.BUILTIN[name]
            assert (listing.metric, listing.mode, listing.description) == (cls.metric, cls.mode, cls.description)
    assert set(catalog.BUILTIN) <= set(base.registry())
    wrong = catalog.Listing(catalog.BUILTIN["copy"].target, "bpc", "min", "copy")
    monkeypatch.setitem(catalog.BUILTIN, "copy", wrong)
    monkeypatch.delitem(base._REGISTRY, "copy")
    with pytest.raises(ConfigError, match="built-in task 'copy': tasks/catalog.py lists"):
        base.registry()
