"""The dependency direction of DESIGN.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(project)}
    return subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_against_the_direction_breaks_a_contract(tmp_path: Path) -> None:
    """The same contracts over three stand-in packages, the library importing the app."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package, body in {"skyreels": "import serve_app.app\n", "deployments": "", "serve_app": ""}.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(body)
        (tmp_path / package / "app.py").write_text("")
    for module in ("parallel", "stages", "gang", "recipe", "pipeline", "optimize"):  # named by the other contracts
        (tmp_path / "skyreels" / module).mkdir()
        (tmp_path / "skyreels" / module / "__init__.py").write_text("")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "serve_app -> deployments -> skyreels, nothing back BROKEN" in result.stdout
