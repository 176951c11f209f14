"""The layout's rules, checked on the source: which package may import which, and that the engine works
without the dashboard's packages.

  iwae_core/maths/   the mathematics: imports nothing of the project but itself and iwae_core.config
  iwae_core/         the engine: never imports dashboard/, app.py or views/, nor Streamlit, Plotly, pandas, kaleido
  dashboard/         the Streamlit glue: imports the engine, never app.py or views/
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("streamlit", "plotly", "pandas", "kaleido")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, at the top or inside a function, relative imports made absolute (from
    `package`, by default the file's own)."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_mathematics_imports_only_itself_and_the_config():
    assert files("iwae_core/maths")
    for path in files("iwae_core/maths"):
        ours = {m for m in imports_of(path) if m.split(".")[0] in ("iwae_core", "dashboard")}
        bad = {m for m in ours if not m.startswith(("iwae_core.maths", "iwae_core.config"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("folder, forbidden", [
    ("iwae_core", ("dashboard", "app", "views", *APP_PACKAGES)),
    ("dashboard", ("app", "views")),
])
def test_no_module_imports_upwards(folder, forbidden):
    for path in files(folder):
        bad = {m for m in imports_of(path) if m.split(".")[0] in forbidden}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_rule_checker_sees_relative_and_function_level_imports(tmp_path):
    """The checks above can fail: a relative import two levels up, inside a function, is seen."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from ..runs import queue\n    from .. import data\n")
    assert {"iwae_core.runs", "iwae_core.runs.queue", "iwae_core", "iwae_core.data"} <= imports_of(
        path, package="iwae_core.maths")


def test_every_engine_module_imports_without_the_dashboards_packages():
    """Import every module of iwae_core in a fresh interpreter where Streamlit, Plotly, pandas and kaleido
    cannot be imported: the engine installs and runs without the `app` extra."""
    script = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {APP_PACKAGES!r}:
            raise ImportError(f"{{name}} is blocked: the engine must not need it")
sys.meta_path.insert(0, Block())
import iwae_core
names = [m.name for m in pkgutil.walk_packages(iwae_core.__path__, "iwae_core.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) >= 25  # every module was imported, not an empty walk


def test_no_script_folder_shadows_a_package():
    """bench/ and tests/ go on sys.path (the browser tests import bench/'s helpers): a module there named
    like a package of the project would hide it from every later import in the same process."""
    packages = {"iwae_core", "dashboard", "app", "views"}
    for folder in ("bench", "tests", "scripts"):
        clash = {p.stem for p in (ROOT / folder).glob("*.py")} & packages
        assert not clash, f"{folder}/ has modules named like the project's packages: {sorted(clash)}"
