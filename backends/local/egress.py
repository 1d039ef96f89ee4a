"""Outbound HTTP(S) for replicas in their own network namespace: a tiny forward proxy.

Why it exists: a replica's namespace has only `lo`, so `pip install …` in its commands (the seed's
vLLM example, the SmolLM2 example) could not reach a package index. Unix sockets cross network
namespaces, so the supervisor forks this proxy *before* it unshares the network: the proxy stays in
the host's namespace, listening on `<replica dir>/egress.sock`. Inside the namespace the supervisor
listens on `127.0.0.1:<egress port>` and pipes each connection to that socket, and the replica gets
`HTTP_PROXY`/`HTTPS_PROXY` pointing there (`NO_PROXY` keeps loopback direct). Proxy-aware clients
(pip, curl, requests, httpx, huggingface_hub) then work as on the host; inbound traffic still only
arrives through the replica's `http.sock`.

Supported: `CONNECT host:port` (HTTPS and any TLS), and absolute-form plain HTTP requests, one
request per connection (`Connection: close` is forced so a second request on the connection cannot
be sent to the wrong host). Standard library only: run inside the supervisor, which imports nothing
else.

Destination policy (`EgressPolicy`, decided by the pure `decide()`): the proxy resolves the name
itself and checks every *resolved address* (so a name that resolves to 127.0.0.1 or to the cloud
metadata address is refused like the literal would be: DNS rebinding gains nothing), then connects
to an address it checked, never re-resolving. Denied by default: loopback, link-local
(169.254.0.0/16: cloud metadata), private and shared ranges (RFC 1918, 100.64/10, fc00::/7, ...),
multicast, reserved and unspecified addresses, IPv4-mapped/NAT64 IPv6 forms of those, and the
extra addresses the backend passes (this host's own interface addresses, the gateway's listen
address). Allowed: every other (public) address, any port. An operator may widen the policy for a
trusted service with `allow` rules (`CIDR` or `CIDR:port`), which win over every deny; previews
never get them (the backend decides that). A refusal is a `403` naming the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

if __package__:  # imported as backends.local.egress (the backend, the settings check, tests)
    from backends.local.streams import pipe
else:  # imported by the supervisor's forked proxy: the modules beside it are on sys.path
    from streams import pipe  # type: ignore[import-not-found,no-redef]

MAX_HEAD = 64 * 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges `is_global` lets through that still must not be reached from a replica.
_ALSO_DENIED: tuple[Network, ...] = (
    ipaddress.ip_network("224.0.0.0/4"),  # multicast (is_global says True for most of it)
    ipaddress.ip_network("ff00::/8"),
)
# Networks that are somebody's inside: private and shared address space, reserved and special-purpose
# blocks, and IPv6 prefixes that carry an IPv4 address (6to4, Teredo). The test is "is this an
# internal network", not "is this globally routed": the documentation blocks (192.0.2.0/24,
# 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) route nowhere on the internet, and in closed labs
# and CI sandboxes they are exactly where the stand-ins for the public internet (package indexes)
# live, so they count as public. Loopback, link-local and this host's addresses are denied apart.
_INTERNAL: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking networks, used for internal test nets
        "240.0.0.0/4",  # reserved, and the limited broadcast address
        "::/128",
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments (Teredo 2001::/32 among them)
        "2002::/16",  # 6to4: an IPv4 address inside
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated)
    )
)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64): checked as that IPv4.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class Rule:
    """A network and an optional port: `10.0.0.0/8`, `192.168.1.5/32:5432`, `[fd00::/8]:443`."""

    network: Network
    port: int | None = None

    def matches(self, address: Address, port: int) -> bool:
        return address.version == self.network.version and address in self.network and self.port in (None, port)

    def __str__(self) -> str:
        net = f"[{self.network}]" if self.network.version == 6 and self.port is not None else str(self.network)
        return net if self.port is None else f"{net}:{self.port}"


def parse_rule(text: str) -> Rule:
    """`CIDR`, `CIDR:port`, `[v6-CIDR]:port` or a bare address; ValueError when it is none of those."""
    raw = text.strip()
    port: int | None = None
    if raw.startswith("["):
        net, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad egress rule {text!r}")
        if rest:
            port = int(rest[1:])
    elif raw.count(":") == 1:  # IPv4 (or v4 CIDR) with a port; a v6 rule with a port needs []
        net, _, port_text = raw.partition(":")
        port = int(port_text)
    else:
        net = raw
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in egress rule {text!r}")
    try:
        return Rule(ipaddress.ip_network(net, strict=False), port)
    except ValueError as e:
        raise ValueError(f"bad egress rule {text!r}: {e}") from e


@dataclass(frozen=True)
class EgressPolicy:
    """What the proxy may connect to: the public internet, minus `deny`, plus `allow` (wins)."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()  # this host's own addresses, the gateway: added by the backend

    def to_json(self) -> str:
        return json.dumps({"allow": [str(r) for r in self.allow], "deny": [str(r) for r in self.deny]})

    @classmethod
    def from_json(cls, text: str) -> EgressPolicy:
        data = json.loads(text)
        return cls(
            allow=tuple(parse_rule(r) for r in data.get("allow", ())),
            deny=tuple(parse_rule(r) for r in data.get("deny", ())),
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    address: Address | None = field(default=None, compare=False)


def _effective(address: Address) -> Address:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address stands for; else the address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if any(address in net for net in _NAT64):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _why_not_public(address: Address) -> str | None:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives there)"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_multicast or any(address.version == n.version and address in n for n in _ALSO_DENIED):
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "private range"
    if any(address.version == n.version and address in n for n in _INTERNAL):
        return "private or reserved range"
    return None


def decide(address: Address, port: int, policy: EgressPolicy) -> Decision:
    """May a replica connect to `address`:`port`? Pure; the proxy calls it for every resolved address."""
    effective = _effective(address)
    for rule in policy.allow:
        if rule.matches(effective, port) or rule.matches(address, port):
            return Decision(True, f"allowed by rule {rule}", address)
    for rule in policy.deny:
        if rule.matches(effective, port) or rule.matches(address, port):
            return Decision(False, f"{effective} is denied ({rule}: this host or the gateway)", address)
    why = _why_not_public(effective)
    if why is not None:
        return Decision(False, f"{effective} is denied ({why})", address)
    return Decision(True, "public address", address)


def choose(addresses: Iterable[Address], port: int, policy: EgressPolicy) -> Decision:
    """The first allowed address of a resolved name, else the first refusal (pure)."""
    refusal: Decision | None = None
    for address in addresses:
        d = decide(address, port, policy)
        if d.allowed:
            return d
        refusal = refusal or d
    return refusal or Decision(False, "the name resolves to no address")


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (a literal resolves to itself, without DNS)."""
    try:
        return [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        with contextlib.suppress(ValueError):
            out.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return out


def parse_head(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, head to send upstream) of one proxy request head. ValueError if bad."""
    lines = head.split(b"\r\n")
    method, target, version = lines[0].decode("latin-1").split(" ", 2)
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return method, host.strip("[]"), int(port), b""
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"not an absolute http URL: {target!r}")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [
        line
        for line in lines[1:]
        if line and not line.lower().startswith((b"proxy-connection:", b"connection:", b"keep-alive:"))
    ]
    out = [f"{method} {path} {version}".encode("latin-1"), *kept, b"Connection: close", b"", b""]
    return method, url.hostname, url.port or 80, b"\r\n".join(out)


def _refuse(writer: asyncio.StreamWriter, status: str, text: str) -> None:
    body = text.encode()
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, policy: EgressPolicy = EgressPolicy()
) -> None:
    up_writer: asyncio.StreamWriter | None = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("request head too large")
        method, host, port, upstream_head = parse_head(head)
        try:
            decision = choose(await resolve(host, port), port, policy)
        except OSError as e:
            _refuse(writer, "502 Bad Gateway", f"cannot resolve {host}: {e}")
            await writer.drain()
            return
        if not decision.allowed or decision.address is None:
            _refuse(writer, "403 Forbidden", f"tidegate egress policy: {host}:{port} refused: {decision.reason}")
            await writer.drain()
            return
        try:
            # The checked address, never the name again: a second lookup could answer differently.
            up_reader, up_writer = await asyncio.open_connection(str(decision.address), port)
        except OSError as e:
            _refuse(writer, "502 Bad Gateway", str(e))
            await writer.drain()
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            up_writer.write(upstream_head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        with contextlib.suppress(Exception):
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    finally:
        for w in (up_writer, writer):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()


async def serve(socket_path: str, policy: EgressPolicy = EgressPolicy()) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)

    async def with_policy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(reader, writer, policy)

    server = await asyncio.start_unix_server(with_policy, path=socket_path, limit=MAX_HEAD)
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()
