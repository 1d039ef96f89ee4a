"""The GPU names tidegate knows (the ones the offers catalog and dstack's gpuhunt use).

Why this module exists: `gpu: "lots"` parses as a GPU *name* in dstack's grammar, so a typo would
otherwise match nothing and surface only as "no offer". The config loader warns on a name outside
this list (a warning, not an error: a local machine may carry a GPU nobody catalogued). The
catalog test keeps it honest: every `gpu_name` in `cloud/data/catalog.csv` must be listed here.
"""

from __future__ import annotations

import re

KNOWN_GPU_NAMES: tuple[str, ...] = (
    # NVIDIA data centre
    "B200", "B100", "GB200", "GH200", "H200", "H100", "H100NVL", "H800", "A100", "A800", "A40",
    "A30", "A16", "A10", "A10G", "A2", "L40S", "L40", "L4", "T4", "V100", "P100", "P40", "P4",
    "K80", "M60", "RTXPRO6000",
    # NVIDIA workstation / consumer
    "A4000", "A4500", "A5000", "A6000", "RTX4000", "RTX5000", "RTX6000", "RTX6000Ada",
    "RTXA4000", "RTXA5000", "RTXA6000", "RTX3060", "RTX3070", "RTX3080", "RTX3090", "RTX4070",
    "RTX4080", "RTX4090", "RTX5090",
    # AMD
    "MI355X", "MI325X", "MI300X", "MI300A", "MI250X", "MI250", "MI210", "MI100", "V520", "V710",
    # Intel
    "Gaudi", "Gaudi2", "Gaudi3",
)  # fmt: skip

_TPU = re.compile(r"^(tpu-)?v\d+[a-z]*(-\d+)?$")


def normalize_gpu_name(name: str) -> str:
    """`RTX 4090`, `rtx-4090`, `NVIDIA RTX4090` -> `rtx4090` (how names compare)."""
    label = re.sub(r"[\s_-]+", "", name.lower())
    for vendor in ("nvidia", "amd", "intel", "geforce", "tesla", "instinct"):
        label = label.removeprefix(vendor)
    return label


_KNOWN = frozenset(normalize_gpu_name(n) for n in KNOWN_GPU_NAMES)


def is_known_gpu(name: str) -> bool:
    """True for a catalogued GPU name (any case/spacing) or a Google TPU (`tpu-v5e-8`, `v3-8`)."""
    return normalize_gpu_name(name) in _KNOWN or bool(_TPU.match(name.strip().lower()))
