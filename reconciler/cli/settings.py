"""Runtime settings of the reconciler commands, built once at the entry point from CLI args + env.

Every command (`plan`, `apply`, `up`, `ps`, `logs`, `stop`, `start`) finds the state directory the
same way (`--state`, else `TIDEGATE_STATE`, else `./state`), so a second terminal acts on the
running `up`. The environment is read only inside `build_settings`, never at import time, and the
result is a frozen value passed down. Env values (bare `KEY` entries of service files take their
value from here) are secrets: `Settings.__repr__` never shows them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidegate.state_dir import choose_state_dir

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DOMAIN = "localhost"
DEFAULT_INTERVAL = 30.0
DEFAULT_READY_TIMEOUT = 1800.0
# Top-level keys of the `--settings` file that belong to the reconciler, not to the cloud backends.
RECONCILER_KEYS = ("previews", "webhook_secret", "egress", "sandbox")
SANDBOX_MODES = ("auto", "required", "off")
WEBHOOK_SECRET_ENV = "TIDEGATE_WEBHOOK_SECRET"


class SettingsError(Exception):
    """A command-line option or env file that cannot be used as given."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    repo: str | None = None
    branch: str = "main"
    path: str | None = None
    watch: bool = False
    allow_empty: bool = False
    listen: str = DEFAULT_LISTEN
    domain: str = DEFAULT_DOMAIN
    settings_file: Path | None = None
    interval: float = DEFAULT_INTERVAL
    # How long a started replica may take to pass its readiness probe before it is replaced.
    # Generous: `pip install` of a serving stack (vLLM, llama-cpp-python built from source) in the
    # commands runs before the port opens, and replacing a replica mid-build only starts over.
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    env_file: Path | None = None
    # Values for bare `KEY` env entries: the reconciler's environment overlaid by --env-file.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The settings file's `previews:` section (reconciler.previews.wiring.preview_settings reads it).
    previews_section: Mapping[str, Any] = field(default_factory=dict)
    # GitHub webhook secret: TIDEGATE_WEBHOOK_SECRET, else the settings file's `webhook_secret`.
    webhook_secret: str | None = field(default=None, repr=False)
    # The control API's read-only endpoints and the dashboard answer loopback clients without a token.
    control_open_reads: bool = False
    # `up`'s gateway tuning options (gateway.options), as GatewaySettings fields.
    gateway_options: Mapping[str, Any] = field(default_factory=dict)
    # The settings file's `egress: {allow: {<service>: [CIDR[:port], ...]}}`: destinations a
    # trusted service's replicas may reach beyond the public internet (never a preview's).
    egress_allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The settings file's `sandbox:` (auto | required | off) for local replicas.
    sandbox: str = "auto"

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def gateway_url(self) -> str:
        host = self.listen_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.listen_port}"

    def service_url(self, name: str) -> str:
        return f"http://{name}.{self.domain}:{self.listen_port}"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingsError(f"--listen must be HOST:PORT, got {listen!r}")
    return host or "127.0.0.1", int(port)


def parse_env_file(text: str, source: str = "env file") -> dict[str, str]:
    """`KEY=VALUE` lines; blank lines and `#` comments skipped; optional `export ` and quotes."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            # Never echo the line: it may hold a secret.
            raise SettingsError(f"{source}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def read_settings_file(path: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `--settings` YAML split in two: (the cloud backends' part, the reconciler's part:
    `previews`, `webhook_secret`). The cloud part goes to `backends.settings.parse_settings`."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(f"cannot read settings {path}: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    ours = {k: raw[k] for k in RECONCILER_KEYS if k in raw}
    if "previews" in ours and not isinstance(ours["previews"] or {}, dict):
        raise SettingsError(f"{path}: previews: expected a mapping")
    if "sandbox" in ours and ours["sandbox"] not in SANDBOX_MODES:
        raise SettingsError(f"{path}: sandbox: expected one of {', '.join(SANDBOX_MODES)}, got {ours['sandbox']!r}")
    if "egress" in ours:
        ours["egress_allow"] = egress_allow(ours["egress"], path)
    return {k: v for k, v in raw.items() if k not in RECONCILER_KEYS}, ours


def egress_allow(section: Any, path: Path | str) -> dict[str, tuple[str, ...]]:
    """`egress: {allow: {<service>: [rule, ...]}}` checked rule by rule (backends.local.egress)."""
    from backends.local.egress import parse_rule

    if not isinstance(section or {}, dict) or set(section or {}) - {"allow"}:
        raise SettingsError(f"{path}: egress: expected a mapping with one key, allow")
    allow = (section or {}).get("allow") or {}
    if not isinstance(allow, dict):
        raise SettingsError(f"{path}: egress.allow: expected a mapping of service name to a list of rules")
    out: dict[str, tuple[str, ...]] = {}
    for service, rules in allow.items():
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise SettingsError(f"{path}: egress.allow.{service}: expected a list of CIDR[:port] strings")
        try:
            out[str(service)] = tuple(str(parse_rule(r)) for r in rules)
        except ValueError as e:
            raise SettingsError(f"{path}: egress.allow.{service}: {e}") from e
    return out


def load_cloud_settings(path: Path | str | None, environ: Mapping[str, str]) -> Any:
    """`backends.settings.CloudSettings` from the `--settings` file without the reconciler's keys."""
    from backends.settings import parse_settings

    cloud = read_settings_file(path)[0] if path is not None else {}
    return parse_settings(cloud, environ, source=str(path or "<settings>"))


def add_common_options(parser: argparse.ArgumentParser, *, source: bool = True, gateway: bool = False) -> None:
    """Options shared by the runtime commands (each command adds only what it uses)."""
    parser.add_argument("--state", metavar="DIR", help="state directory (default: $TIDEGATE_STATE or ./state)")
    parser.add_argument(
        "--settings", metavar="FILE", help="settings file: cloud backends (aws/azure), previews, egress, sandbox"
    )
    if source:
        parser.add_argument("--repo", metavar="URL|PATH", help="git URL (file://, https, ssh) or local path")
        parser.add_argument("--branch", default="main", help="branch to deploy (default: main)")
        parser.add_argument("--path", metavar="DIR", help="sub-folder of the repo holding the configs")
        parser.add_argument("--watch", action="store_true", help="watch a local working tree (development)")
        parser.add_argument("--env-file", metavar="FILE", help="values for bare KEY env entries (never printed)")
        parser.add_argument(
            "--allow-empty", action="store_true", help="let a commit with no configs tear every service down"
        )
        parser.add_argument(
            "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between fetches/passes (default 30)"
        )
        parser.add_argument(
            "--ready-timeout",
            type=float,
            default=DEFAULT_READY_TIMEOUT,
            metavar="SECONDS",
            help=f"how long a new replica may take to become ready before it is replaced (default {DEFAULT_READY_TIMEOUT:g})",
        )
    if gateway:
        parser.add_argument("--listen", default=None, metavar="HOST:PORT", help="gateway address (127.0.0.1:8080)")
        parser.add_argument("--domain", default=None, help="service domain: <name>.<domain> (default localhost)")


def build_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The one place that reads the environment (passed in; `os.environ` at the entry point)."""
    env_map = dict(os.environ if environ is None else environ)
    state = choose_state_dir(getattr(args, "state", None), env_map)
    env_file = getattr(args, "env_file", None)
    values = dict(env_map)
    if env_file:
        try:
            text = Path(env_file).read_text()
        except OSError as e:
            raise SettingsError(f"cannot read --env-file {env_file}: {e.strerror}") from e
        values.update(parse_env_file(text, source=str(env_file)))
    repo = getattr(args, "repo", None)
    if repo and "://" not in repo and not _looks_like_scp(repo):
        repo = str(Path(repo).expanduser().resolve())
    interval = float(getattr(args, "interval", None) or DEFAULT_INTERVAL)
    if interval <= 0:
        raise SettingsError("--interval must be positive")
    ready_timeout = float(getattr(args, "ready_timeout", None) or DEFAULT_READY_TIMEOUT)
    if ready_timeout <= 0:
        raise SettingsError("--ready-timeout must be positive")
    listen = getattr(args, "listen", None) or DEFAULT_LISTEN
    split_listen(listen)
    settings_file = getattr(args, "settings", None)
    ours = read_settings_file(Path(settings_file).expanduser())[1] if settings_file else {}
    secret = env_map.get(WEBHOOK_SECRET_ENV) or values.get(WEBHOOK_SECRET_ENV) or ours.get("webhook_secret")
    from gateway.options import gateway_overrides

    try:
        gateway_options = gateway_overrides(args)
    except ValueError as e:
        raise SettingsError(str(e)) from e
    return Settings(
        state_dir=Path(state).expanduser().resolve(),
        repo=repo,
        branch=getattr(args, "branch", None) or "main",
        path=(getattr(args, "path", None) or None),
        watch=bool(getattr(args, "watch", False)),
        allow_empty=bool(getattr(args, "allow_empty", False)),
        listen=listen,
        domain=getattr(args, "domain", None) or DEFAULT_DOMAIN,
        settings_file=Path(settings_file).expanduser().resolve() if settings_file else None,
        interval=interval,
        ready_timeout=ready_timeout,
        env_file=Path(env_file) if env_file else None,
        env=values,
        previews_section=dict(ours.get("previews") or {}),
        webhook_secret=str(secret) if secret else None,
        control_open_reads=bool(getattr(args, "control_open_reads", False)),
        gateway_options=gateway_options,
        egress_allow=ours.get("egress_allow") or {},
        sandbox=str(ours.get("sandbox") or "auto"),
    )


def _looks_like_scp(repo: str) -> bool:
    """`git@host:org/repo.git` (scp-like ssh) is a URL, not a local path."""
    head, sep, _ = repo.partition(":")
    return bool(sep) and "@" in head and "/" not in head
