"""No import circles: a module never imports, directly or through others, a module that imports it (imports
inside functions count too). Next to the layer contracts of test_import_contracts.py; grimp is import-linter's
import graph."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def import_circles(package: str) -> list[str]:
    """Every circle through an import of `package`, as 'a -> b -> ... -> a'."""
    graph = grimp.build_graph(package, cache_dir=None)
    circles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                circles.add(" -> ".join((module, *back)))
    return sorted(circles)


@pytest.mark.parametrize("package", ["skyreels", "deployments", "serve_app"])
def test_no_import_circles(package: str) -> None:
    assert import_circles(package) == []


def test_a_circle_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "circled"
    (package / "gang").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "gang" / "__init__.py").write_text("")
    (package / "gang" / "local.py").write_text("from circled.gang.process import start\n")
    (package / "gang" / "process.py").write_text("def start():\n    from circled.gang.local import main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_circles("circled") == ["circled.gang.local -> circled.gang.process -> circled.gang.local",
                                         "circled.gang.process -> circled.gang.local -> circled.gang.process"]
    sys.modules.pop("circled", None)
