"""Where shared state lives on etcd: the `etcd://` location, the key layout, and a small client.

Why here: the reconciler (state store, leader election) and the gateway (watch-fed routes and
tokens) both read and write the same keys, and neither may import the other; the contracts
package owns the layout, as it owns `routes.json`.

The client is `etcd3gw` (etcd's HTTP/JSON gateway, served by etcd 3.4+ at `/v3/`): pure Python
over `requests`, no gRPC or protobuf (which would pin versions against everything else in the
venv), maintained by OpenStack for Python 3.10-3.13. What it lacks is added here, thinly: several
endpoints (the next one is tried when one does not answer), user/password auth (a token from
`/v3/auth/authenticate`, renewed on 401), transactions with compares, and a watch that says when
its stream ends (etcd3gw's own watch thread dies silently, so a reader could not tell "no change"
from "etcd is gone").

Key layout under `<prefix>/` (values are the bytes the directory store keeps in the file of the
same name): `state.json`, `installation.json`, `routes.json`, `tokens.json`, `previews/<file>`,
`journal/<seq, 12 digits>`, `signals/<name>.json`, `stats/<node>-<pid>.json` (under the
writer's lease, so a dead gateway's numbers vanish), `leader` (the elected reconciler, under
its lease; its create revision fences every write the leader makes).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tidegate.etcd_ops import KV as KV
from tidegate.etcd_ops import b64, kv_of
from tidegate.etcd_ops import cmp_create_revision as cmp_create_revision
from tidegate.etcd_ops import cmp_mod_revision as cmp_mod_revision
from tidegate.etcd_ops import op_delete as op_delete
from tidegate.etcd_ops import op_delete_range as op_delete_range
from tidegate.etcd_ops import op_put as op_put
from tidegate.etcd_ops import range_end as range_end
from tidegate.etcd_refusals import PASSWORD_ENV as PASSWORD_ENV
from tidegate.etcd_refusals import USER_ENV as USER_ENV
from tidegate.etcd_refusals import EtcdError as EtcdError
from tidegate.etcd_refusals import EtcdRefused as EtcdRefused
from tidegate.etcd_refusals import EtcdUnavailable as EtcdUnavailable
from tidegate.etcd_refusals import detail_of, refusal
from tidegate.etcd_transport import Endpoints, send

log = logging.getLogger("tidegate.etcd")

SCHEME = "etcd"
TLS_SCHEME = "etcds"

LEADER_KEY = "leader"
JOURNAL_PREFIX = "journal/"
SIGNALS_PREFIX = "signals/"
STATS_PREFIX = "stats/"
PREVIEWS_PREFIX = "previews/"
# Whole documents a leader publishes and every machine may read (file name = key).
SHARED_DOCS = ("state.json", "installation.json", "routes.json", "tokens.json")
# Each request's bound: a member that lost quorum answers nothing; we must move on quickly.
DEFAULT_TIMEOUT = 2.0
# Below this much time left, another member is not worth asking: the caller's deadline is past.
MIN_ATTEMPT = 0.05


def is_etcd_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith((f"{SCHEME}://", f"{TLS_SCHEME}://"))


@dataclass(frozen=True)
class EtcdLocation:
    """`etcd://host1:2379,host2:2379/<prefix>` (`etcds://` for TLS) plus TLS files and credentials."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    cert_key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls,
        url: str,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> EtcdLocation:
        parts = urlsplit(url)
        if "@" in (parts.netloc or ""):  # never echo this URL: it holds a password
            raise EtcdError(
                f"--state: an etcd location takes no user or password (…://user:password@host); "
                f"set ${USER_ENV} and ${PASSWORD_ENV} instead"
            )
        if parts.scheme not in (SCHEME, TLS_SCHEME):
            raise EtcdError(f"--state {url!r}: an etcd location starts with etcd:// (or etcds:// for TLS)")
        endpoints: list[tuple[str, int]] = []
        for item in (parts.netloc or "").split(","):
            host, sep, port = item.strip().rpartition(":")
            if not item.strip():
                continue
            if not sep:
                host, port = item.strip(), "2379"
            if not host or not port.isdigit():
                raise EtcdError(f"--state {url!r}: endpoint {item!r} is not host:port")
            endpoints.append((host.strip("[]"), int(port)))
        if not endpoints:
            raise EtcdError(f"--state {url!r}: no etcd endpoint (etcd://host1:2379,host2:2379/<prefix>)")
        prefix = parts.path.strip("/")
        if not prefix:
            raise EtcdError(
                f"--state {url!r}: a key prefix is required after the endpoints (…:2379/<prefix>)"
            )
        if bool(cert) != bool(key):
            raise EtcdError("--etcd-cert and --etcd-key go together (a client certificate and its key)")
        for option, path in (("--etcd-cacert", cacert), ("--etcd-cert", cert), ("--etcd-key", key)):
            if path and not Path(path).is_file():
                raise EtcdError(f"{option} {path}: no such file")
        env = environ or {}
        tls = parts.scheme == TLS_SCHEME or bool(cacert or cert)
        return cls(
            tuple(endpoints), prefix, tls, cacert, cert, key, env.get(USER_ENV) or None, env.get(PASSWORD_ENV)
        )

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"{TLS_SCHEME if self.tls else SCHEME}://{hosts}/{self.prefix}"

    def key(self, name: str) -> str:
        return f"/{self.prefix}/{name}"


class EtcdClient:
    """A few v3 calls over etcd3gw, across every endpoint of one location (thread-safe)."""

    def __init__(self, location: EtcdLocation, timeout: float = DEFAULT_TIMEOUT) -> None:
        from etcd3gw.client import Etcd3Client

        self.location = location
        self.timeout = timeout
        protocol = "https" if location.tls else "http"
        self._clients = [
            Etcd3Client(
                host=h,
                port=p,
                protocol=protocol,
                ca_cert=location.cacert,
                cert_cert=location.cert,
                cert_key=location.cert_key,
                timeout=timeout,
                api_path="/v3/",
            )
            for h, p in location.endpoints
        ]
        # requests lets $REQUESTS_CA_BUNDLE/$CURL_CA_BUNDLE override a session's CA bundle (its
        # merge_environment_settings); --etcd-cacert must win, so every request names it.
        self._request_options: dict[str, Any] = {"verify": location.cacert} if location.cacert else {}
        self._endpoints = Endpoints(len(self._clients))
        self._token: str | None = None

    # -- transport -------------------------------------------------------------------------
    def _authenticate(self, client: Any) -> None:
        loc = self.location
        if not loc.user:
            return
        # etcd judges the token a request carries before anything else, /auth/authenticate
        # included: an expired one must not go along with the request for a new one (None drops
        # the session's header from this request only; other threads keep theirs meanwhile).
        answer = client.post(
            client.get_url("/auth/authenticate"),
            json={"name": loc.user, "password": loc.password or ""},
            headers={"Authorization": None},
            **self._request_options,
        )
        token = str(answer.get("token", ""))
        for c in self._clients:
            c.session.headers["Authorization"] = token
        self._token = token

    def _post(self, client: Any, path: str, body: Mapping[str, Any], timeout: float) -> Any:
        from etcd3gw import exceptions as ex

        if self.location.user and self._token is None:
            self._authenticate(client)
        try:
            return send(client, path, body, timeout, self._request_options)
        except ex.Etcd3Exception as e:
            if "token" not in detail_of(e).lower() or not self.location.user:
                raise
        self._authenticate(client)  # an expired auth token: once more with a new one
        return send(client, path, body, timeout, self._request_options)

    def call(self, path: str, body: Mapping[str, Any], budget: float | None = None) -> dict[str, Any]:
        """POST `body` to `/v3/<path>`, trying each endpoint once (tidegate.etcd_transport: the
        last that answered first, those that failed or hold a request last), each for at most
        the client's timeout, all of them within `budget` s when given (a caller's deadline).
        No endpoint answering is EtcdUnavailable; etcd refusing this client as configured (TLS
        trust, client certificate, user, permission) is EtcdRefused; any other error answer is
        EtcdError."""
        from etcd3gw import exceptions as ex

        errors: list[str] = []
        refused: list[str] = []
        began = time.monotonic()
        asked: set[int] = set()
        while len(asked) < len(self._clients):
            now = time.monotonic()
            idx = self._endpoints.order(now, frozenset(asked))[0]  # anew: others may have failed
            asked.add(idx)
            client = self._clients[idx]
            endpoint = f"{client.host}:{client.port}"
            left = math.inf if budget is None else budget - (now - began)
            if left < MIN_ATTEMPT:
                errors.append(f"{endpoint}: not asked (out of time)")
                continue
            out = self._endpoints.asking(idx, now)
            try:
                answer = self._post(client, path, body, min(self.timeout, left))
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError, ex.InternalServerError) as e:
                self._endpoints.failed(idx, out, time.monotonic())
                reason = refusal(detail_of(e), self.location, endpoint)
                if reason is not None:
                    refused.append(reason)
                elif not self.location.tls and "RemoteDisconnected" in detail_of(e):
                    errors.append(
                        f"{endpoint}: closed the connection unanswered (if it serves TLS: etcds://)"
                    )
                    continue
                errors.append(f"{endpoint}: {type(e).__name__}")
                continue
            except ex.Etcd3Exception as e:
                detail = detail_of(e)
                reason = refusal(detail, self.location, endpoint)
                if reason is None and ("no leader" in detail or "timed out" in detail or "unhealthy" in detail):
                    self._endpoints.failed(idx, out, time.monotonic())
                    errors.append(f"{endpoint}: {detail.strip()[:120]}")
                    continue
                self._endpoints.finished(idx, out)
                if reason is not None:
                    raise EtcdRefused(reason) from None
                raise EtcdError(f"etcd {path}: {detail.strip()[:300]}") from e
            except OSError as e:  # a TLS file requests could not load (unreadable, not PEM)
                self._endpoints.finished(idx, out)
                raise EtcdRefused(f"etcd TLS files (--etcd-cacert/--etcd-cert/--etcd-key): {e}") from None
            except BaseException:
                self._endpoints.finished(idx, out)
                raise
            self._endpoints.answered(idx, out)
            return dict(answer)
        if refused and len(refused) == len(errors):
            raise EtcdRefused(refused[0])
        raise EtcdUnavailable(f"etcd at {self.location.describe()} did not answer ({'; '.join(errors)})")

    def probe(self, write: bool = False) -> None:
        """One read under the prefix (and with `write`, a transaction whose compare never holds
        and whose put etcd nonetheless checks permission for: nothing is written). Raises
        EtcdRefused when etcd will not serve this client as configured (a process should stop
        and say so), EtcdUnavailable when nothing answers."""
        base = self.location.key("")
        self.call("/kv/range", {"key": b64(base), "range_end": range_end(base), "limit": "1", "keys_only": True})
        if write:
            never = {"key": b64(base + "probe"), "target": "VERSION", "result": "EQUAL", "version": "-1"}
            self.txn([never], [op_put(base + "probe", b"")])

    # -- key/value -------------------------------------------------------------------------
    def get(self, key: str, budget: float | None = None) -> KV | None:
        answer = self.call("/kv/range", {"key": b64(key)}, budget)
        kvs = answer.get("kvs") or []
        return kv_of(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under `prefix`, sorted, and the store revision they were read at."""
        answer = self.call(
            "/kv/range", {"key": b64(prefix), "range_end": range_end(prefix), "sort_order": "ASCEND"}
        )
        revision = int(answer.get("header", {}).get("revision", 0))
        return [kv_of(kv) for kv in answer.get("kvs") or []], revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = self.call("/kv/put", body)
        return int(answer.get("header", {}).get("revision", 0))

    def delete(self, key: str, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = range_end(key)
        answer = self.call("/kv/deleterange", body)
        return int(answer.get("deleted", 0))

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> tuple[bool, int]:
        """One transaction: (whether the compares held, the revision after it)."""
        answer = self.call("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(answer.get("succeeded", False)), int(answer.get("header", {}).get("revision", 0))

    # -- leases ----------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        answer = self.call("/lease/grant", {"TTL": str(ttl), "ID": "0"})
        return int(answer["ID"])

    def keepalive(self, lease: int, budget: float | None = None) -> int:
        """Refresh `lease`; its remaining TTL (<= 0: the lease is gone)."""
        answer = self.call("/lease/keepalive", {"ID": str(lease)}, budget)
        result = answer.get("result", answer)
        return int(result.get("TTL", 0) or 0)

    def revoke(self, lease: int) -> None:
        self.call("/kv/lease/revoke", {"ID": str(lease)})

    # -- watch -----------------------------------------------------------------------------
    def watch_prefix(
        self, prefix: str, start_revision: int, stop: threading.Event
    ) -> Iterator[tuple[str, KV]]:
        """Events ("PUT" | "DELETE", kv) under `prefix` from `start_revision`, until `stop` is set
        or the stream ends (the iterator then returns: the caller re-reads and watches again).
        The stream asks etcd for progress notices so a dead connection is noticed by its silence."""
        client = self._clients[self._endpoints.order(time.monotonic())[0]]
        request: dict[str, Any] = {
            "create_request": {
                "key": b64(prefix),
                "range_end": range_end(prefix),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        try:
            resp = client.session.post(
                client.get_url("/watch"),
                json=request,
                stream=True,
                timeout=(self.timeout, 15.0),
                **self._request_options,
            )
        except Exception as e:  # requests' connection errors: the caller resyncs
            raise EtcdUnavailable(f"watch {prefix}: {type(e).__name__}") from e
        if resp.status_code != 200:  # e.g. an expired auth token: the caller's re-read renews it
            detail = resp.text[:300]
            resp.close()
            endpoint = f"{client.host}:{client.port}"
            raise EtcdError(refusal(detail, self.location, endpoint) or f"watch {prefix}: {detail.strip()}")
        buffer = b""
        try:
            for chunk in resp.iter_content(chunk_size=None):
                if stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("canceled"):
                        return
                    for event in result.get("events") or []:
                        yield str(event.get("type", "PUT")), kv_of(event.get("kv", {}))
        except Exception as e:  # the stream broke (etcd gone, read timeout)
            raise EtcdUnavailable(f"watch {prefix}: {type(e).__name__}") from e
        finally:
            resp.close()
