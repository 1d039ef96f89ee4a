"""`.dstack/profiles.yml`: named sets of profile parameters; the one marked `default: true` applies
to every service, and a service file's own value wins field by field (as `dstack run` does).

Parsed and checked like a service file (positions, warnings for parameters tidegate ignores,
errors with suggestions for unknown keys). Pure: the loader passes the text in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .diagnostics import Diagnostic, Severity
from .dstack_fields import DSTACK_ONLY_TOP, did_you_mean
from .models import ProfileParams
from .parse import Collector, report_validation_error
from .yamldoc import YamlSyntaxError, load_document, too_complex

PROFILES_PATH = ".dstack/profiles.yml"
PROFILE_KEYS = frozenset(ProfileParams.model_fields)


@dataclass(frozen=True)
class ProfilesResult:
    default: dict[str, Any] | None  # raw parameters of the default profile, ready to merge
    default_name: str | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity == Severity.ERROR for d in self.diagnostics)


def parse_profiles_text(text: str, path: str = PROFILES_PATH) -> ProfilesResult:
    """Never raises; errors come back as diagnostics."""
    try:
        return _parse(text, path)
    except Exception as e:  # never raise out of the loader
        return ProfilesResult(
            None, None, [Diagnostic(path, 1, 1, "", f"internal error: {type(e).__name__}: {e}")]
        )


def _parse(text: str, path: str) -> ProfilesResult:
    try:
        doc = load_document(text)
    except YamlSyntaxError as e:
        return ProfilesResult(
            None, None, [Diagnostic(path, e.position.line, e.position.column, "", e.message)]
        )
    out = Collector(path, doc)
    if too_complex(doc.node):
        out.at((), "the document is too large or uses too many aliases to validate")
        return ProfilesResult(None, None, out.items)
    data = doc.data
    if data is None:
        return ProfilesResult(None)
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
        out.at(("profiles",), "expected `profiles:` with a list of profiles")
        return ProfilesResult(None, None, out.items)
    for key in data:
        if key != "profiles":
            out.at((key,), f"unknown key '{key}'{did_you_mean(str(key), ['profiles'])}", key=True)
    default: dict[str, Any] | None = None
    default_name: str | None = None
    for index, profile in enumerate(data["profiles"]):
        loc: tuple[str | int, ...] = ("profiles", index)
        if not isinstance(profile, dict):
            out.at(loc, "a profile is a mapping with `name:` and parameters")
            continue
        params = _params(profile, loc, out)
        if not isinstance(profile.get("name"), str):
            out.at((*loc, "name"), "every profile needs a `name:` string")
        is_default = profile.get("default", False)
        if not isinstance(is_default, bool):
            out.at((*loc, "default"), "`default` must be true or false")
        elif is_default:
            if default is not None:
                out.at(
                    (*loc, "default"),
                    f"profile {default_name!r} is already the default; this one is ignored",
                    Severity.WARNING,
                )
                continue
            default, default_name = params, profile.get("name")
    return ProfilesResult(default, default_name if isinstance(default_name, str) else None, out.items)


def _params(profile: dict[Any, Any], loc: tuple[str | int, ...], out: Collector) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in profile.items():
        if key in ("name", "default"):
            continue
        if key in PROFILE_KEYS:
            params[key] = value
        elif isinstance(key, str) and key in DSTACK_ONLY_TOP:
            out.at(
                (*loc, key),
                f"`{key}` is accepted but tidegate does not act on it ({DSTACK_ONLY_TOP[key]})",
                Severity.WARNING,
                key=True,
            )
        else:
            hint = did_you_mean(str(key), PROFILE_KEYS | {"name", "default"})
            out.at((*loc, str(key)), f"unknown profile key '{key}'{hint}", key=True)
    try:
        ProfileParams.model_validate(params)
    except ValidationError as e:
        report_validation_error(e, out, loc)
    return params
