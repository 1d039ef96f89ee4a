"""Fixtures for the cloud backend tests: a moto EC2 server on loopback and EC2 client doubles.

Imported by test_aws.py / test_catalog.py (tests/backends/conftest.py belongs to the local backend).
Nothing here can reach a real cloud: dummy credentials, instance metadata disabled, and every
client built with an explicit 127.0.0.1 endpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from backends.aws.backend import AwsBackend
from backends.cloud.catalog import load_catalog
from backends.cloud.tunnels import CloudTunnels
from backends.settings import AwsSettings

REGION = "us-east-1"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


# Each test module that binds `moto_url` gets its own session fixture instance; they share one
# server (started by the first, stopped by the last), since starting moto costs seconds.
_SERVER: dict[str, Any] = {"users": 0, "server": None, "url": None, "patch": None}


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    if _SERVER["users"] == 0:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import ThreadedMotoServer

        # Headers and body leave in separate writes; with Nagle on, each response waits for the
        # client's delayed ACK (~40 ms). Loopback test server only.
        MotoRequestHandler.disable_nagle_algorithm = True
        patch = pytest.MonkeyPatch()
        for key, value in FAKE_ENV.items():
            patch.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        _SERVER.update(server=server, url=f"http://{host}:{port}", patch=patch)
    _SERVER["users"] += 1
    try:
        yield str(_SERVER["url"])
    finally:
        _SERVER["users"] -= 1
        if _SERVER["users"] == 0:
            _SERVER["server"].stop()
            _SERVER["patch"].undo()
            _SERVER.update(server=None, url=None, patch=None)


@pytest.fixture(scope="session")
def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)


@pytest.fixture(scope="session")
def linux_ami(moto_url: str) -> str:
    client = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    # Filtered on the server: all of moto's ~1300 Amazon images in one answer take seconds to
    # serialize and parse. The unfiltered list stays the fallback should moto's names change.
    amazon_linux = [{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}]
    images = client.describe_images(Owners=["amazon"], Filters=amazon_linux)["Images"]
    images = images or client.describe_images(Owners=["amazon"])["Images"]
    return str(next(i["ImageId"] for i in images if i.get("Platform") != "windows"))


@pytest.fixture
def owner() -> str:
    return f"tg-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aws_settings(moto_url: str, linux_ami: str) -> AwsSettings:
    # address_host: moto hands out IPs that are not ours to reach; replicas answer on loopback.
    return AwsSettings(
        regions=[REGION],
        endpoint_url=moto_url,
        ami=linux_ami,
        allowed_cidr="203.0.113.7/32",
        address_host="127.0.0.1",
    )


@pytest.fixture
def make_aws(aws_settings: AwsSettings, owner: str, ec2: Any, tmp_path: Path) -> Callable[..., AwsBackend]:
    """Backends sharing one moto client (building boto3 clients is slow); `real_clients=True` lets
    the backend build its own from `endpoint_url`, as in production. Their tunnel keys live in the
    test's state dir; no tunnel is opened (that is test_ssh_tunnel.py's business)."""
    catalog = load_catalog()

    def make(
        *,
        settings: AwsSettings | None = None,
        owner_id: str | None = None,
        real_clients: bool = False,
        **kwargs: Any,
    ) -> AwsBackend:
        if not real_clients:
            kwargs.setdefault("client_factory", lambda region: ec2)
        kwargs.setdefault("tunnels", CloudTunnels(tmp_path / "state", "aws"))
        return AwsBackend(settings or aws_settings, owner_id or owner, catalog=catalog, **kwargs)

    return make


def instances_tagged(ec2: Any, key: str, value: str, *, live: bool = True) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{key}", "Values": [value]}]
    if live:
        filters.append(
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
        )
    out: list[dict[str, Any]] = []
    for r in ec2.describe_instances(Filters=filters)["Reservations"]:
        out.extend(r["Instances"])
    return out


def client_error(code: str, status: int = 400, operation: str = "RunInstances") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class FaultyEc2:
    """A real moto-backed client whose named methods raise queued errors first (fault injection)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.faults: dict[str, list[Exception]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def inject(self, method: str, *errors: Exception) -> None:
        self.faults.setdefault(method, []).extend(errors)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            queued = self.faults.get(name)
            if queued:
                raise queued.pop(0)
            return attr(*args, **kwargs)

        return call


class _HidingPaginator:
    def __init__(self, inner: Any, hidden: set[str]) -> None:
        self.inner, self.hidden = inner, hidden

    def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.inner.paginate(**kwargs):
            for reservation in page.get("Reservations", []):
                reservation["Instances"] = [
                    i for i in reservation.get("Instances", []) if i["InstanceId"] not in self.hidden
                ]
            yield page


class IdempotentEc2:
    """The EC2 behaviours moto lacks: `ClientToken` idempotency on run_instances, and eventual
    consistency (instances in `hidden` are not yet visible to describe_instances). It can also lose
    the response of the next run_instances after the instance was created (a timeout)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens: dict[str, dict[str, Any]] = {}
        self.hidden: set[str] = set()
        self.hide_new = False
        self.lose_next_response = False
        self.launches = 0

    def run_instances(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import ReadTimeoutError

        token = kwargs.get("ClientToken")
        if token and token in self.tokens:
            return self.tokens[token]
        response: dict[str, Any] = self.inner.run_instances(**kwargs)
        self.launches += 1
        if token:
            self.tokens[token] = response
        if self.hide_new:
            self.hidden.update(i["InstanceId"] for i in response["Instances"])
        if self.lose_next_response:
            self.lose_next_response = False
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1/")
        return response

    def get_paginator(self, name: str) -> Any:
        paginator = self.inner.get_paginator(name)
        return _HidingPaginator(paginator, self.hidden) if name == "describe_instances" else paginator

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
