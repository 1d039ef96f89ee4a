"""Runtime settings of the reconciler commands, built once at the entry point from CLI args + env.

Every command (`plan`, `apply`, `up`, `ps`, `logs`, `stop`, `start`) finds the state directory the
same way (`--state`, else `TIDEGATE_STATE`, else `./state`), so a second terminal acts on the
running `up`. The environment is read only inside `build_settings`, never at import time, and the
result is a frozen value passed down. Env values (bare `KEY` entries of service files take their
value from here) are secrets: `Settings.__repr__` never shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.config.yamldoc import Document, YamlSyntaxError, load_document, locate
from tidegate.etcd import EtcdLocation
from tidegate.state_dir import choose_state_dir

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DOMAIN = "localhost"
DEFAULT_INTERVAL = 30.0
DEFAULT_READY_TIMEOUT = 1800.0
# Services applied at once (reconciler.engine.dispatch): backend calls are I/O, threads are cheap.
DEFAULT_WORKERS = 32
# Top-level keys of the `--settings` file that belong to the reconciler, not to the cloud backends.
RECONCILER_KEYS = (
    "previews", "webhook_secret", "egress", "sandbox", "default_backends", "default_backend",
    "token_limits",  # the gateway's (gateway.ratelimit_settings reads it)
)
SANDBOX_MODES = ("auto", "required", "off")
BACKEND_KINDS = ("local", "aws", "azure")
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
    workers: int = DEFAULT_WORKERS
    env_file: Path | None = None
    # Values for bare `KEY` env entries: the reconciler's environment overlaid by --env-file.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The settings file's `previews:` section (reconciler.previews.wiring.preview_settings reads it).
    previews_section: Mapping[str, Any] = field(default_factory=dict)
    # GitHub webhook secret: TIDEGATE_WEBHOOK_SECRET, else the settings file's `webhook_secret`.
    webhook_secret: str | None = field(default=None, repr=False)
    # Where a service without `backends:` may go (the cheapest offer wins); empty: every backend.
    default_backends: tuple[str, ...] = ()
    # The control API's read-only endpoints and the dashboard answer loopback clients without a token.
    control_open_reads: bool = False
    # `up`'s gateway tuning options (gateway.options), as GatewaySettings fields.
    gateway_options: Mapping[str, Any] = field(default_factory=dict)
    # The settings file's `egress: {allow: {<service>: [CIDR[:port], ...]}}`: destinations a
    # trusted service's replicas may reach beyond the public internet (never a preview's).
    egress_allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The settings file's `sandbox:` (auto | required | off) for local replicas.
    sandbox: str = "auto"
    # `--state etcd://…`: where the shared state lives (state_dir is then this machine's own part).
    etcd: EtcdLocation | None = None
    # `--tunnel-keys DIR`: the installation's SSH tunnel keys (None: `<state_dir>/ssh`).
    tunnel_keys: Path | None = None

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
        """Where users reach a service: https (without :443) when the gateway has an HTTPS listener."""
        https = self.gateway_options.get("https_listen")
        if https:
            port = split_listen(str(https))[1]
            return f"https://{name}.{self.domain}" + ("" if port == 443 else f":{port}")
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
    `previews`, `webhook_secret`, `default_backends`). The cloud part goes to
    `backends.settings.parse_settings`. Every error names the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"cannot read settings {path}: {e.strerror or e}") from e
    try:
        doc = load_document(text)
    except YamlSyntaxError as e:
        raise SettingsError(f"{path}:{e.position.line}:{e.position.column}: {e.message}") from e
    raw = doc.data
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}:1:1: expected a mapping at the top level")
    ours = {k: raw[k] for k in RECONCILER_KEYS if k in raw}
    if "previews" in ours and not isinstance(ours["previews"] or {}, dict):
        raise SettingsError(_where(path, doc, ("previews",), "previews: expected a mapping"))
    if "default_backend" in ours and "default_backends" in ours:
        raise SettingsError(
            _where(path, doc, ("default_backend",), "set `default_backends` or `default_backend`, not both")
        )
    key = "default_backends" if "default_backends" in ours else "default_backend"
    if key in ours:
        ours["default_backends"] = _default_backends(path, doc, key, ours.pop(key))
    if "sandbox" in ours and ours["sandbox"] not in SANDBOX_MODES:
        message = f"sandbox: expected one of {', '.join(SANDBOX_MODES)}, got {ours['sandbox']!r}"
        raise SettingsError(_where(path, doc, ("sandbox",), message))
    if "egress" in ours:
        try:
            ours["egress_allow"] = egress_allow(ours["egress"], path)
        except SettingsError as e:  # name the line too
            raise SettingsError(_where(path, doc, ("egress",), str(e).removeprefix(f"{path}: "))) from e
    return {k: v for k, v in raw.items() if k not in RECONCILER_KEYS}, ours


def _default_backends(path: Path | str, doc: Document, key: str, value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SettingsError(_where(path, doc, (key,), f"{key}: expected a list of backend names"))
    for index, name in enumerate(names):
        if name not in BACKEND_KINDS:
            loc: tuple[str | int, ...] = (key, index) if isinstance(value, list) else (key,)
            message = f"{key}: unknown backend {name!r}; valid backends: {', '.join(BACKEND_KINDS)}"
            raise SettingsError(_where(path, doc, loc, message))
    return tuple(dict.fromkeys(names))


def _where(path: Path | str, doc: Document | None, loc: Sequence[str | int], message: str) -> str:
    position = locate(doc.node if doc else None, loc)[0]
    return f"{path}:{position.line}:{position.column}: {message}"


def egress_allow(section: Any, path: Path | str) -> dict[str, tuple[str, ...]]:
    """`egress: {allow: {<service>: [rule, ...]}}` checked rule by rule (the local backend's grammar)."""
    from backends.local.backend import parse_egress_rule

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
            out[str(service)] = tuple(parse_egress_rule(r) for r in rules)
        except ValueError as e:
            raise SettingsError(f"{path}: egress.allow.{service}: {e}") from e
    return out


def load_cloud_settings(path: Path | str | None, environ: Mapping[str, str]) -> Any:
    """`backends.settings.CloudSettings` from the `--settings` file without the reconciler's keys;
    an invalid file is a SettingsError naming the file, line and field of each problem."""
    from backends.settings import SettingsError as CloudSettingsError
    from backends.settings import parse_settings

    cloud = read_settings_file(path)[0] if path is not None else {}
    try:
        return parse_settings(cloud, environ, source=str(path or "<settings>"))
    except CloudSettingsError as e:
        cause = e.__cause__
        if path is None or not isinstance(cause, ValidationError):
            raise SettingsError(str(e)) from e
        doc = load_document(Path(path).read_text(encoding="utf-8"))
        problems = []
        for err in cause.errors(include_url=False):
            loc = _settings_loc(doc, err["loc"])
            position, matched = locate(doc.node, loc, key=err["type"] == "extra_forbidden")
            shown = [*matched, loc[-1]] if loc and (not matched or matched[-1] != loc[-1]) else matched
            field = ".".join(str(p) for p in shown)
            problems.append(f"{path}:{position.line}:{position.column}: {field}: {_message(err)}")
        raise SettingsError("\n".join(problems)) from e


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return str(err["msg"]).removeprefix("Value error, ")


def _settings_loc(doc: Document, loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """`backends` may be a mapping (`{aws: {...}}`) that the cloud settings see as a list: map the
    list index back to the mapping's key so the line is the user's."""
    out: list[str | int] = list(loc)
    data = doc.data
    if len(out) >= 2 and out[0] == "backends" and isinstance(out[1], int) and isinstance(data, dict):
        section = data.get("backends")
        if isinstance(section, dict) and out[1] < len(section):
            out[1] = list(section)[out[1]]
    return tuple(out)


def add_common_options(parser: argparse.ArgumentParser, *, source: bool = True, gateway: bool = False) -> None:
    """Options shared by the runtime commands (each command adds only what it uses)."""
    parser.add_argument(
        "--state",
        metavar="DIR|etcd://…",
        help="state directory, or shared state on etcd://host1:2379,host2:2379/<prefix> (default: $TIDEGATE_STATE or ./state)",
    )
    from gateway.etcd_cli import add_etcd_options

    add_etcd_options(parser)
    parser.add_argument(
        "--settings", metavar="FILE", help="settings file: cloud backends (aws/azure), previews, egress, sandbox"
    )
    if source:
        parser.add_argument("--repo", metavar="URL|PATH", help="git URL (file://, https, ssh) or local path")
        parser.add_argument(
            "--branch",
            default=None,
            help="branch to deploy (default: the branch checked out in a local --repo, else main)",
        )
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
        parser.add_argument(
            "--workers",
            type=int,
            default=DEFAULT_WORKERS,
            metavar="N",
            help=f"services whose backend calls run at once (default {DEFAULT_WORKERS}; 1 = one after another)",
        )
    if gateway:
        parser.add_argument("--listen", default=None, metavar="HOST:PORT", help="gateway address (127.0.0.1:8080)")
        parser.add_argument("--domain", default=None, help="service domain: <name>.<domain> (default localhost)")


def build_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The one place that reads the environment (passed in; `os.environ` at the entry point)."""
    env_map = dict(os.environ if environ is None else environ)
    from gateway.etcd_cli import etcd_location, local_state_dir, tunnel_keys_dir
    from tidegate.etcd import EtcdError

    try:
        etcd = etcd_location(args, env_map)  # shared state: the state dir is this machine's own part
    except EtcdError as e:
        raise SettingsError(str(e)) from e
    state = local_state_dir(args, env_map) if etcd is not None else choose_state_dir(getattr(args, "state", None), env_map)
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
    workers = int(getattr(args, "workers", None) or DEFAULT_WORKERS)
    if workers < 1:
        raise SettingsError("--workers must be at least 1")
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
        if settings_file and "token_limits" in ours:
            from gateway.ratelimit_settings import read_token_limits

            gateway_options["token_limits"] = read_token_limits(Path(settings_file).expanduser())
    except ValueError as e:  # TokenLimitsError is one, naming file:line:column
        raise SettingsError(str(e)) from e
    return Settings(
        state_dir=Path(state).expanduser().resolve(),
        repo=repo,
        branch=getattr(args, "branch", None) or checked_out_branch(repo) or "main",
        path=(getattr(args, "path", None) or None),
        watch=bool(getattr(args, "watch", False)),
        allow_empty=bool(getattr(args, "allow_empty", False)),
        listen=listen,
        domain=getattr(args, "domain", None) or DEFAULT_DOMAIN,
        settings_file=Path(settings_file).expanduser().resolve() if settings_file else None,
        interval=interval,
        ready_timeout=ready_timeout,
        workers=workers,
        env_file=Path(env_file) if env_file else None,
        env=values,
        previews_section=dict(ours.get("previews") or {}),
        webhook_secret=str(secret) if secret else None,
        default_backends=tuple(ours.get("default_backends") or ()),
        control_open_reads=bool(getattr(args, "control_open_reads", False)),
        gateway_options=gateway_options,
        egress_allow=ours.get("egress_allow") or {},
        sandbox=str(ours.get("sandbox") or "auto"),
        etcd=etcd,
        tunnel_keys=tunnel_keys_dir(args, env_map),
    )


GATEWAY_ADDRESS_FILE = "gateway-address.json"


def publish_gateway_address(settings: Settings) -> None:
    """`up` says where its gateway listens, so `ps` in another terminal prints the right URLs."""
    from tidegate.fsio import write_json_atomic

    payload = {"listen": settings.listen, "domain": settings.domain, "pid": os.getpid()}
    write_json_atomic(settings.state_dir / GATEWAY_ADDRESS_FILE, payload)


def running_gateway_listen(state_dir: Path) -> str | None:
    """The `--listen` of the `up` whose gateway is running on this state dir, else None."""
    try:
        raw = json.loads((state_dir / GATEWAY_ADDRESS_FILE).read_text(encoding="utf-8"))
        listen, pid = str(raw["listen"]), int(raw["pid"])
        split_listen(listen)
        os.kill(pid, 0)  # still alive (signal 0 only checks)
    except PermissionError:
        return listen  # alive, but another user's process
    except (OSError, ValueError, KeyError, TypeError, SettingsError):
        return None
    return listen


def checked_out_branch(repo: str | None) -> str | None:
    """The branch checked out in a local repository (`plan --repo .` plans what you are on);
    None for a URL, a detached HEAD or anything that is not a git work tree."""
    if not repo or "://" in repo or _looks_like_scp(repo) or not (Path(repo) / ".git").exists():
        return None  # a URL or a bare repository (its HEAD is not what anyone "checked out")
    try:
        out = subprocess.run(
            ["git", "-C", repo, "symbolic-ref", "--quiet", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name else None


def state_inside_repo(settings: Settings) -> str | None:
    """A warning when the state directory lies inside a local config repository: its copies of
    the configs (revisions, work dirs) would be found as more services."""
    if not settings.repo or "://" in settings.repo or _looks_like_scp(settings.repo):
        return None
    repo = Path(settings.repo).resolve()
    if not settings.state_dir.resolve().is_relative_to(repo):
        return None
    return (
        f"the state directory {settings.state_dir} is inside the config repository {repo}: its copies "
        "of the configs can be picked up as duplicate services; use --state (or TIDEGATE_STATE) "
        "to put it elsewhere, or list it in the repository's .gitignore"
    )


def _looks_like_scp(repo: str) -> bool:
    """`git@host:org/repo.git` (scp-like ssh) is a URL, not a local path."""
    head, sep, _ = repo.partition(":")
    return bool(sep) and "@" in head and "/" not in head
