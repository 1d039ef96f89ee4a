"""The egress proxy's destination policy as a decision table (pure: no packet is sent anywhere).

Every non-loopback address here — the cloud metadata address above all — is only ever handed to
`decide()`/`choose()`; the real proxy is exercised with loopback targets only (tests/security/
test_attacks.py and tests/backends/test_local.py).
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from backends.local.egress import EgressPolicy, choose, decide, parse_rule, resolve

HOST = EgressPolicy(deny=(parse_rule("203.0.113.7"), parse_rule("2001:db8::7")))  # "this host"
WIDENED = EgressPolicy(
    allow=(parse_rule("10.1.0.0/16"), parse_rule("192.168.5.5/32:5432"), parse_rule("[fd00::/8]:443"),
           parse_rule("127.0.0.1/32:8080")),
    deny=HOST.deny,
)  # fmt: skip


@pytest.mark.parametrize(
    ("address", "port", "policy", "allowed", "why"),
    [
        pytest.param("93.184.215.14", 443, EgressPolicy(), True, "public", id="public-v4"),
        pytest.param("2606:4700::6810:84e5", 443, EgressPolicy(), True, "public", id="public-v6"),
        pytest.param("127.0.0.1", 8080, EgressPolicy(), False, "loopback", id="loopback"),
        pytest.param("127.8.9.10", 80, EgressPolicy(), False, "loopback", id="loopback-range"),
        pytest.param("::1", 8080, EgressPolicy(), False, "loopback", id="loopback-v6"),
        pytest.param("169.254.169.254", 80, EgressPolicy(), False, "link-local", id="cloud-metadata"),
        pytest.param("fe80::1", 80, EgressPolicy(), False, "link-local", id="link-local-v6"),
        pytest.param("fd00:ec2::254", 80, EgressPolicy(), False, "private", id="aws-metadata-v6"),
        pytest.param("10.0.0.1", 80, EgressPolicy(), False, "private", id="rfc1918-10"),
        pytest.param("172.16.0.1", 80, EgressPolicy(), False, "private", id="rfc1918-172"),
        pytest.param("192.168.1.1", 80, EgressPolicy(), False, "private", id="rfc1918-192"),
        pytest.param("100.64.0.1", 80, EgressPolicy(), False, "private", id="cgnat"),
        pytest.param("fc00::1", 80, EgressPolicy(), False, "private", id="unique-local-v6"),
        pytest.param("0.0.0.0", 80, EgressPolicy(), False, "unspecified", id="unspecified"),
        pytest.param("::", 80, EgressPolicy(), False, "unspecified", id="unspecified-v6"),
        pytest.param("224.0.0.251", 5353, EgressPolicy(), False, "multicast", id="multicast"),
        pytest.param("ff02::fb", 5353, EgressPolicy(), False, "multicast", id="multicast-v6"),
        pytest.param("255.255.255.255", 80, EgressPolicy(), False, "private", id="broadcast"),
        pytest.param("::ffff:127.0.0.1", 80, EgressPolicy(), False, "loopback", id="v4-mapped-loopback"),
        pytest.param("::ffff:169.254.169.254", 80, EgressPolicy(), False, "link-local", id="v4-mapped-metadata"),
        pytest.param("::ffff:10.0.0.1", 80, EgressPolicy(), False, "private", id="v4-mapped-private"),
        pytest.param("64:ff9b::a9fe:a9fe", 80, EgressPolicy(), False, "link-local", id="nat64-metadata"),
        pytest.param("::ffff:93.184.215.14", 443, EgressPolicy(), True, "public", id="v4-mapped-public"),
        pytest.param("203.0.113.7", 443, HOST, False, "this host", id="this-hosts-address"),
        pytest.param("2001:db8::7", 443, HOST, False, "this host", id="this-hosts-v6-address"),
        pytest.param("10.1.2.3", 9000, WIDENED, True, "rule 10.1.0.0/16", id="operator-network"),
        pytest.param("10.2.0.1", 9000, WIDENED, False, "private", id="outside-the-rule"),
        pytest.param("192.168.5.5", 5432, WIDENED, True, "rule 192.168.5.5/32:5432", id="operator-host-port"),
        pytest.param("192.168.5.5", 22, WIDENED, False, "private", id="other-port-of-that-host"),
        pytest.param("fd12::1", 443, WIDENED, True, "rule [fd00::/8]:443", id="operator-v6"),
        pytest.param("127.0.0.1", 8080, WIDENED, True, "rule 127.0.0.1/32:8080", id="operator-allows-the-gateway"),
        pytest.param("::ffff:10.1.0.9", 80, WIDENED, True, "rule 10.1.0.0/16", id="v4-mapped-matches-v4-rule"),
    ],
)
def test_decide(address: str, port: int, policy: EgressPolicy, allowed: bool, why: str) -> None:
    d = decide(ipaddress.ip_address(address), port, policy)
    assert d.allowed is allowed and why in d.reason, d


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    """DNS rebinding: whatever a name claims, only an allowed resolved address is ever connected to."""
    public, metadata, loop = (ipaddress.ip_address(a) for a in ("93.184.215.14", "169.254.169.254", "127.0.0.1"))
    assert choose([metadata, loop], 80, EgressPolicy()).allowed is False
    picked = choose([metadata, public], 80, EgressPolicy())
    assert picked.allowed and picked.address == public
    assert choose([], 80, EgressPolicy()).allowed is False


def test_literals_resolve_without_dns_and_names_through_it() -> None:
    assert asyncio.run(resolve("169.254.169.254", 80)) == [ipaddress.ip_address("169.254.169.254")]
    assert asyncio.run(resolve("fe80::1%eth0", 80)) == [ipaddress.ip_address("fe80::1")]
    assert ipaddress.ip_address("127.0.0.1") in asyncio.run(resolve("localhost", 80))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("10.0.0.0/8", "10.0.0.0/8", id="cidr"),
        pytest.param("10.1.2.3", "10.1.2.3/32", id="address"),
        pytest.param("10.1.2.3:5432", "10.1.2.3/32:5432", id="address-port"),
        pytest.param("fd00::/8", "fd00::/8", id="v6-cidr"),
        pytest.param("[fd00::1]:443", "[fd00::1/128]:443", id="v6-port"),
    ],
)
def test_rules_parse_and_round_trip(text: str, shown: str) -> None:
    rule = parse_rule(text)
    assert str(rule) == shown and parse_rule(str(rule)) == rule


@pytest.mark.parametrize("text", ["example.com", "10.0.0.0/8:0", "10.0.0.0/8:70000", "[fd00::1", "10.0.0.0/33"])
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(text)


def test_policy_travels_as_json() -> None:
    assert EgressPolicy.from_json(WIDENED.to_json()) == WIDENED


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        # Documentation blocks are nobody's inside network; closed labs and CI sandboxes put their
        # stand-ins for the public internet (package indexes) there, so they pass like public ones.
        pytest.param("203.0.113.80", True, id="test-net-3-package-index"),
        pytest.param("198.51.100.9", True, id="test-net-2"),
        pytest.param("2001:db8::80", True, id="ipv6-documentation"),
        # Internal and special-purpose space stays denied without is_global's help.
        pytest.param("198.18.0.1", False, id="benchmarking-net"),
        pytest.param("100.64.0.1", False, id="shared-address-space"),
        pytest.param("240.0.0.1", False, id="reserved"),
        pytest.param("255.255.255.255", False, id="broadcast"),
        pytest.param("2002:a00:1::1", False, id="6to4-carrying-10.0.0.1"),
        pytest.param("2001:0:4136:e378::1", False, id="teredo"),
        pytest.param("192.0.0.8", False, id="ietf-protocol-assignments"),
    ],
)
def test_internal_means_inside_networks_not_unrouted_ones(address: str, allowed: bool) -> None:
    # Pure decision only: no packet is sent to any of these addresses.
    assert decide(ipaddress.ip_address(address), 443, EgressPolicy()).allowed is allowed
