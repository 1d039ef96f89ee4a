"""Rewrite imports on a branch made before the package restructure (reconciler/, backends/ and the
tidegate/ contracts moved into sub-packages). Run from the repo root after merging or rebasing:

    python scripts/restructure_imports.py [FILE ...]   # default: every .py under the project folders

It rewrites dotted module names (imports, mock.patch strings) and `from pkg import module` lines.
Single-line imports of names that moved to another module are split too (SPLITS below). Not
covered: backends.settings.Settings is now CloudSettings. It is idempotent (safe to run twice);
run `ruff check --fix` afterwards to re-sort imports. Delete it once every branch is merged.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
mapping = {
    'gateway.snapshot': 'tidegate.routes',
    'gateway.signals': 'tidegate.signals',
    'backends.fsutil': 'tidegate.fsio',
    'reconciler.loader': 'reconciler.config.loader',
    'reconciler.source': 'reconciler.source.checkout',
    'reconciler.code_files': 'reconciler.source.code_files',
    'reconciler.state': 'reconciler.state.store',
    'reconciler.journal': 'reconciler.state.journal',
    'reconciler.records': 'reconciler.state.records',
    'reconciler.redact': 'reconciler.state.redact',
    'reconciler.errors': 'reconciler.state.errors',
    'reconciler.view': 'reconciler.state.view',
    'reconciler.desired': 'reconciler.engine.desired',
    'reconciler.plan': 'reconciler.engine.plan',
    'reconciler.apply': 'reconciler.engine.apply',
    'reconciler.observe': 'reconciler.engine.observe',
    'reconciler.probe': 'reconciler.engine.probe',
    'reconciler.liveness': 'reconciler.engine.liveness',
    'reconciler.autoscale': 'reconciler.engine.autoscale',
    'reconciler.targets': 'reconciler.engine.targets',
    'reconciler.naming': 'reconciler.engine.naming',
    'reconciler.loop': 'reconciler.engine.loop',
    'reconciler.schedule': 'reconciler.engine.schedule',
    'reconciler.engine': 'reconciler.engine.reconcile',
    'reconciler.engine_types': 'reconciler.engine.values',
    'reconciler.stats': 'reconciler.engine.stats',
    'reconciler.offers': 'reconciler.engine.offers',
    'reconciler.plan_output': 'reconciler.render.plan_output',
    'reconciler.plan_markdown': 'reconciler.render.plan_markdown',
    'reconciler.previews': 'reconciler.previews.decision',
    'reconciler.preview_loop': 'reconciler.previews.loop',
    'reconciler.preview_wiring': 'reconciler.previews.wiring',
    'reconciler.pr_source': 'reconciler.previews.pr_source',
    'reconciler.github': 'reconciler.previews.github',
    'reconciler.cli': 'reconciler.cli.main',
    'reconciler.commands': 'reconciler.cli.commands',
    'reconciler.plan_cmd': 'reconciler.cli.plan_cmd',
    'reconciler.validate_cmd': 'reconciler.cli.validate_cmd',
    'reconciler.cloud_cmd': 'reconciler.cli.cloud_cmd',
    'reconciler.output': 'reconciler.cli.output',
    'reconciler.next_steps': 'reconciler.cli.next_steps',
    'reconciler.quickstart': 'reconciler.cli.quickstart',
    'reconciler.settings': 'reconciler.cli.settings',
    'reconciler.runtime': 'reconciler.cli.runtime',
    'backends.local': 'backends.local.backend',
    'backends.local_egress': 'backends.local.egress',
    'backends.local_host': 'backends.local.host',
    'backends.local_layout': 'backends.local.layout',
    'backends.local_proc': 'backends.local.proc',
    'backends.local_relay': 'backends.local.relay',
    'backends.local_spawn': 'backends.local.spawn',
    'backends.local_status': 'backends.local.status',
    'backends.aws': 'backends.aws.backend',
    'backends.aws_ec2': 'backends.aws.ec2',
    'backends.aws_network': 'backends.aws.network',
    'backends.azure': 'backends.azure.backend',
    'backends.azure_arm': 'backends.azure.arm',
    'backends.azure_network': 'backends.azure.network',
    'backends.cloud_common': 'backends.cloud.common',
    'backends.catalog': 'backends.cloud.catalog',
    'backends.orphans': 'backends.cloud.orphans',
    'backends.startup': 'backends.cloud.startup',
}

olds = sorted(mapping, key=len, reverse=True)
# Old names that are now packages: their children in the new layout (so new-style names are kept).
children: dict[str, set[str]] = {}
for o in mapping:
    folder = ROOT / o.replace(".", "/")
    if folder.is_dir():
        children[o] = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
FROM_NAMES = re.compile(r"[ \t]+import[ \t]+\(?[ \t]*([\w \t,]+)")


def replace_dotted(m: re.Match[str]) -> str:
    old, rest = m.group(1), m.string[m.end() :]
    kids = children.get(old, set())
    nxt = re.match(r"\.(\w+)", rest)
    if nxt and nxt.group(1) in kids:
        return old  # already a new-style name
    names = FROM_NAMES.match(rest)
    if names and kids:
        imported = {n.split(" as ")[0].strip() for n in names.group(1).split(",") if n.strip()}
        if imported and imported <= kids:
            return old  # `from <package> import <new module>`
    return mapping[old]


dotted = re.compile(r"(?<![\w.])(" + "|".join(re.escape(o) for o in olds) + r")(?![\w])")
from_pkg = re.compile(r"^(?P<ind>\s*)from (?P<pkg>[\w.]+) import (?P<names>[^()\n#]+?)\s*$", re.M)

def fix_from(m: re.Match) -> str:
    pkg, ind = m["pkg"], m["ind"]
    parts = [p.strip() for p in m["names"].split(",") if p.strip()]
    if not any(f"{pkg}.{p.split(' as ')[0].strip()}" in mapping for p in parts):
        return m.group(0)
    keep, lines = [], []
    for p in parts:
        name, _, alias = p.partition(" as ")
        name, alias = name.strip(), alias.strip() or name.strip()
        full = f"{pkg}.{name}"
        if full in mapping:
            parent, _, leaf = mapping[full].rpartition(".")
            lines.append(f"{ind}from {parent} import {leaf}" + ("" if leaf == alias else f" as {alias}"))
        else:
            keep.append(p)
    if keep:
        lines.insert(0, f"{ind}from {pkg} import {', '.join(keep)}")
    return "\n".join(lines)

# Names that moved to another module: (module, names, new module).
SPLITS = [
    ("tidegate.routes", {"read_snapshot", "write_snapshot"}, "tidegate.routes_io"),
    ("gateway.stats", {"stats_path", "write_stats"}, "tidegate.stats_file"),
    ("tidegate.signals", {"STATS_DIR"}, "tidegate.stats_file"),
    ("backends.settings", {"build_backends"}, "backends.registry"),
]


def split_names(text: str) -> str:
    for mod, names, new in SPLITS:
        pat = re.compile(r"^(?P<ind>\s*)from " + re.escape(mod) + r" import (?P<names>[^()\n#]+?)\s*$", re.M)

        def fix(m: re.Match[str], names: set[str] = names, mod: str = mod, new: str = new) -> str:
            parts = [x.strip() for x in m["names"].split(",")]
            moved = [x for x in parts if x.split(" as ")[0] in names]
            if not moved:
                return m.group(0)
            keep = [x for x in parts if x not in moved]
            out = [f"{m['ind']}from {mod} import {', '.join(keep)}"] if keep else []
            return "\n".join([*out, f"{m['ind']}from {new} import {', '.join(moved)}"])

        text = pat.sub(fix, text)
    return text


files = [Path(a) for a in sys.argv[1:]] or [
    p for d in ["reconciler", "backends", "gateway", "tidegate", "tests", "bench", "examples"]
    if (ROOT / d).exists() for p in (ROOT / d).rglob("*.py")
]
changed = 0
for f in files:
    t = f.read_text()
    n = dotted.sub(replace_dotted, t)
    n = split_names(from_pkg.sub(fix_from, n))
    if n != t:
        f.write_text(n)
        changed += 1
print("files changed:", changed)
