"""Is every top-level package tidegate installs really ours? A guard against site-packages collisions.

Why: the wheel installs four top-level packages (`tidegate`, `reconciler`, `backends`, `gateway`);
the last three are generic names another distribution may also install. Renaming them would break
the layout every deployment and branch builds on, so instead the `tidegate` command checks at start
that all four come from the same place as this file and names the one that does not, rather than
failing later with a confusing ImportError or, worse, running someone else's module. The README
("Installing") recommends a virtualenv of its own (pipx) for the same reason.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

OUR_PACKAGES = ("tidegate", "reconciler", "backends", "gateway")


def _origin(name: str) -> str | None:
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def foreign_packages() -> list[str]:
    """One line per top-level package that is missing or not installed beside this one."""
    home = Path(__file__).resolve().parent.parent
    problems: list[str] = []
    for name in OUR_PACKAGES:
        origin = _origin(name)
        if origin is None or origin in ("namespace", "built-in"):
            problems.append(f"package {name!r} is missing from {home} (or is not a regular package)")
        elif Path(origin).resolve().parent.parent != home:
            problems.append(
                f"package {name!r} is imported from {Path(origin).resolve().parent}, not from {home}: "
                f"another installed distribution named {name!r} shadows tidegate's"
            )
    return problems
