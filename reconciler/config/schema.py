"""The JSON Schema editors use for `.dstack.yml` (`tidegate schema`).

It describes what users may *write* (strings like `1..4`, `A100:2`, `5m`), not the normalised
models, and lists the dstack fields tidegate accepts without acting on them, so an editor does not
flag a config that dstack itself would run.
"""

from __future__ import annotations

from typing import Any

from .dstack_fields import DSTACK_ONLY_NESTED, DSTACK_ONLY_TOP
from .models import ServiceConfig


def service_json_schema() -> dict[str, Any]:
    schema = ServiceConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dstack service (tidegate)"
    properties: dict[str, Any] = schema.setdefault("properties", {})
    properties["type"] = {"const": "service", "description": "Only `service` files are deployed"}
    for key, why in DSTACK_ONLY_TOP.items():
        properties.setdefault(
            key, {"description": f"accepted for dstack compatibility; tidegate ignores it: {why}"}
        )
    resources = schema.get("$defs", {}).get("ResourcesSpec", {}).get("properties")
    if isinstance(resources, dict):
        for key, why in DSTACK_ONLY_NESTED[("resources",)].items():
            resources.setdefault(
                key, {"description": f"accepted for dstack compatibility; tidegate ignores it: {why}"}
            )
    schema["additionalProperties"] = False
    schema["required"] = ["type", "port"]
    return schema
