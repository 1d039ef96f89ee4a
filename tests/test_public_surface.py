"""Each unit's `__init__` declares what others may import; nothing reaches into private modules.

A unit is a sub-package (`reconciler.engine`, `backends.local`, `gateway.api`, ...) or, for the
modules directly in `backends/` and `gateway/`, that root package. Its `__init__.py` names its
public modules in `PUBLIC_MODULES`; every other module of it is private. This test reads every
module of the project (an AST scan, imports inside functions and under `if TYPE_CHECKING:`
included) and fails on an import, from outside a unit, of anything but the unit itself (the names
its `__init__` exports) or one of its public modules. A root package's own modules are shared
with its sub-packages (`gateway.errors` by `gateway.api`): the rule holds for the other roots.
`tidegate/` is the contracts package: all of it is public.

Why a test and not an import-linter contract: a `forbidden` contract lists the private modules,
so a new module would be public until someone listed it; here a module is private until its
unit declares it.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOTS = ("reconciler", "backends", "gateway")
PROJECT = (*ROOTS, "tidegate")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _units() -> dict[str, tuple[str, ...]]:
    """Unit -> its declared public modules (roots and their sub-packages)."""
    units: dict[str, tuple[str, ...]] = {}
    for root in ROOTS:
        for init in [ROOT / root / "__init__.py", *sorted((ROOT / root).glob("*/__init__.py"))]:
            unit = _module_name(init)
            units[unit] = tuple(getattr(importlib.import_module(unit), "PUBLIC_MODULES", ()))
    return units


UNITS = _units()


def _unit_of(module: str) -> str | None:
    """The innermost unit holding `module` (a sub-package, else its root); None for tidegate."""
    parts = module.split(".")
    if parts[0] not in ROOTS:
        return None
    if len(parts) >= 2 and ".".join(parts[:2]) in UNITS:
        return ".".join(parts[:2])
    return parts[0]


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module or `package.name`) for every import of a project module."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def _reaches_in(importer: str, target: str) -> str | None:
    """Why `importer` importing `target` (a module, or `module.name`) breaks the rule, else None."""
    if target.split(".")[0] not in PROJECT:
        return None
    unit = _unit_of(target)
    if unit is None:
        return None
    if _unit_of(importer) == unit:
        return None
    root_unit = unit in ROOTS
    if root_unit and importer.split(".")[0] == unit:
        return None  # a root's own modules are shared with its sub-packages
    rest = target[len(unit) + 1 :].split(".") if target != unit else []
    if not rest or rest == [""]:
        return None
    first = rest[0]
    is_module = (ROOT / Path(*unit.split(".")) / f"{first}.py").exists()
    is_package = (ROOT / Path(*unit.split(".")) / first / "__init__.py").exists()
    if is_package or not is_module:
        return None  # a sub-package (its own unit) or a name the unit's __init__ exports
    if first in UNITS[unit]:
        return None
    return f"{unit}.{first} is private to {unit} (PUBLIC_MODULES: {', '.join(UNITS[unit]) or 'none'})"


def _project_files() -> list[Path]:
    return sorted(p for root in PROJECT for p in (ROOT / root).rglob("*.py"))


def test_every_unit_declares_its_public_modules() -> None:
    for unit, public in UNITS.items():
        folder = ROOT / Path(*unit.split("."))
        missing = [m for m in public if not (folder / f"{m}.py").exists()]
        assert not missing, f"{unit}.PUBLIC_MODULES names modules that do not exist: {missing}"
        init = folder / "__init__.py"
        assert "PUBLIC_MODULES" in init.read_text(encoding="utf-8"), f"{init} declares no PUBLIC_MODULES"


@pytest.mark.parametrize("path", _project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_name_only_public_modules_of_other_units(path: Path) -> None:
    importer = _module_name(path)
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {target}: {why}"
        for line, target in _imports(path)
        if (why := _reaches_in(importer, target)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("importer", "target", "breaks"),
    [
        pytest.param("reconciler.render.plan_output", "reconciler.engine.desired.DesiredSet", False, id="public-module"),
        pytest.param("reconciler.render.plan_output", "reconciler.engine.naming.replica_id", True, id="private-module"),
        pytest.param("reconciler.engine.desired", "reconciler.engine.naming.replica_id", False, id="same-unit"),
        pytest.param("reconciler.previews.wiring", "reconciler.config.SpotPolicy", False, id="init-export"),
        pytest.param("gateway.api.openai", "gateway.errors.ApiError", False, id="root-module-same-root"),
        pytest.param("reconciler.cli.runtime", "gateway.core.Gateway", True, id="root-module-other-root"),
        pytest.param("reconciler.cli.runtime", "backends.cloud.ssh_tunnel.TunnelManager", True, id="private-cloud"),
        pytest.param("reconciler.cli.runtime", "tidegate.routes.ModelRoute", False, id="contracts"),
    ],
)
def test_the_rule(importer: str, target: str, breaks: bool) -> None:
    assert (_reaches_in(importer, target) is not None) is breaks
