"""A gateway fed from etcd opens its own SSH tunnels to cloud replicas.

Why: a cloud replica's route names the leader's tunnel socket, a unix socket on the leader's
machine; a `tidegate gateway` (or a standby `up`) on another machine cannot use it. The routes
also carry where that tunnel goes (tidegate.routes.TunnelRoute: the instance's address, sshd
port, user, pinned public host key, service port — never a secret). This rewrite, applied to
routes.json as it arrives from etcd, keeps one tunnel per such replica from this machine, with the
installation's client key copied here out of band (`<local-state>/ssh/` or `--tunnel-keys DIR`),
and points the upstream at the local socket. Without that key a cloud replica is left out of this
gateway's routes, logged once per replica, and `/healthz` answers "degraded" naming the folder.

It lives in the reconciler's CLI because it composes the gateway (gateway.etcd_feed's
`rewrite_routes` hook) with the cloud tunnel code (backends.cloud): neither may import the other.
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from backends.cloud.tunnels import Backoff, CloudTunnels, TunnelTarget, ssh_fingerprint
from tidegate.etcd import EtcdError, EtcdUnavailable
from tidegate.routes import RoutesSnapshot, ServiceRoute, Upstream

log = logging.getLogger("tidegate.gateway.tunnels")

# Sockets in <local>/run/tunnels/gateway/, apart from the backends' run/tunnels/<aws|azure>/: on a
# leader both exist, and never the same socket.
SOCKETS = "gateway"


class GatewayTunnels:
    """The `rewrite_routes` of an etcd-fed gateway (callable: routes body -> (body, problem))."""

    def __init__(
        self,
        local_dir: Path,
        keys_dir: Path,
        *,
        expected_client: str | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.tunnels = CloudTunnels(
            local_dir, SOCKETS, active=True, backoff=backoff, connect_timeout=connect_timeout, keys_dir=keys_dir
        )
        self.keys = self.tunnels.keys
        self.expected_client = expected_client  # the fingerprint recorded on etcd, when known
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _key_problem(self) -> str | None:
        folder = self.keys.directory
        hint = (
            f"copy id_ed25519 from the leader's <local-state>/ssh/ (or its --tunnel-keys folder) to {folder} "
            f"(0600), or pass --tunnel-keys DIR"
        )
        if not self.keys.client_key_path.is_file():
            return f"no tunnel key in {folder}: cloud replicas are not reachable from this gateway; {hint}"
        if self.expected_client is not None:
            try:
                mine = ssh_fingerprint(self.keys.client_public())
            except ValueError as e:
                return f"the tunnel key in {folder} cannot be read ({e}); {hint}"
            if mine != self.expected_client:
                return (
                    f"the tunnel key in {folder} ({mine}) is not the installation's ({self.expected_client}): "
                    f"cloud replicas are not reachable from this gateway; {hint}"
                )
        return None

    def __call__(self, body: bytes) -> tuple[bytes, str | None]:
        try:
            snapshot = RoutesSnapshot.model_validate_json(body)
        except ValueError:
            return body, None  # the gateway reports an unreadable routes.json itself
        with self._lock:
            return self._rewrite(snapshot, body)

    def _rewrite(self, snapshot: RoutesSnapshot, body: bytes) -> tuple[bytes, str | None]:
        tunneled = [u for s in snapshot.services.values() for u in s.upstreams if u.tunnel is not None]
        if not tunneled:
            self.tunnels.retain([])
            return body, None
        problem = self._key_problem()
        kept: list[str] = []
        services: dict[str, ServiceRoute] = {}
        for name, service in snapshot.services.items():
            ups: list[Upstream] = []
            for u in service.upstreams:
                if u.tunnel is None:
                    ups.append(u)
                    continue
                error = problem
                if error is None:
                    try:
                        ups.append(u.model_copy(update={"url": self._open(u)}))
                        kept.append(u.replica_id)
                        self._warned.discard(u.replica_id)
                        continue
                    except Exception as e:  # a socket folder we may not use, a stuck loop: never crash the feed
                        error = f"cannot open its tunnel: {type(e).__name__}: {e}"
                        problem = problem or f"cloud replica {u.replica_id}: {error}"
                if u.replica_id not in self._warned:
                    self._warned.add(u.replica_id)
                    log.warning("cloud replica %s left out of this gateway's routes: %s", u.replica_id, error)
            services[name] = service.model_copy(update={"upstreams": tuple(ups)})
        self.tunnels.retain(kept)
        self._warned &= {u.replica_id for u in tunneled}  # a replica gone and back is reported again
        out = snapshot.model_copy(update={"services": services})
        return out.model_dump_json(indent=2).encode(), problem

    def _open(self, u: Upstream) -> str:
        t = u.tunnel
        assert t is not None
        self.tunnels.open(TunnelTarget(u.replica_id, t.host, t.port, t.user, t.host_key, t.service_port))
        return self.tunnels.address(u.replica_id)

    def shutdown(self) -> None:
        with self._lock:
            self.tunnels.shutdown()


def cmd_gateway(args: argparse.Namespace) -> int:
    """`tidegate gateway`: with etcd, the gateway's feed opens this machine's own tunnels."""
    from gateway.cli import cmd_gateway as serve_gateway
    from gateway.etcd_cli import etcd_location, local_state_dir, tunnel_keys_dir
    from reconciler.cli import tunnel_keys

    try:
        location = etcd_location(args)
    except EtcdError:
        location = None  # the gateway's own handler reports it
    if location is None:
        return serve_gateway(args)
    local = local_state_dir(args)
    expected = None
    try:
        from tidegate.etcd import EtcdClient

        record = tunnel_keys.recorded(EtcdClient(location), location)
        expected = record.get("client") if record else None
    except EtcdUnavailable as e:
        log.warning("cannot read the recorded tunnel key fingerprint (%s); not checked", e)
    except EtcdError:  # refused as configured (TLS, user, permission): the gateway says it in one line
        return serve_gateway(args)
    tunnels = GatewayTunnels(local, tunnel_keys.keys_dir(local, tunnel_keys_dir(args)), expected_client=expected)
    try:
        return serve_gateway(args, rewrite_routes=tunnels)
    finally:
        tunnels.shutdown()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Give `tidegate gateway` (registered by gateway.cli) the handler that adds the tunnels."""
    gateway = subparsers.choices.get("gateway")
    if gateway is not None:
        gateway.set_defaults(func=cmd_gateway)
