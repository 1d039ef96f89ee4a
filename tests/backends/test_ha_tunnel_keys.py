"""Several machines on one etcd prefix and the installation's SSH tunnel keys (reconciler.cli.tunnel_keys).

A first leader (its own --local-state) records the fingerprints of its key material on a real
3-member etcd and launches an instance on EC2 (moto server mode; the "instance" is a real sshd on
loopback configured from the user data EC2 holds). A second machine — another local state dir —
with the key folder copied passes the check, reaches that instance through its own tunnel, and
would send byte-identical user data for a retried launch. A third with other keys (or none) is
refused with one message naming the folder and the copy command, and so is a real `tidegate up`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest_cloud as cloud
import pytest

from backends.aws.backend import AwsBackend
from backends.base import ReplicaStatus
from backends.cloud.tunnels import Backoff, CloudTunnels, TunnelTarget
from backends.settings import AwsSettings
from reconciler.cli import tunnel_keys
from reconciler.engine.probe import probe_replica
from tests.support.etcd_cluster import EtcdCluster, etcd_cluster
from tests.support.git_repo import bare_remote
from tests.support.hello_server import hello_server
from tests.support.sshd import Sshd, require_sshd
from tidegate.etcd import EtcdClient, EtcdLocation

moto_url, ec2, linux_ami, owner = cloud.moto_url, cloud.ec2, cloud.linux_ami, cloud.owner
aws_settings, make_aws = cloud.aws_settings, cloud.make_aws
__all__ = ["etcd_cluster"]  # the session fixture, used by name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service_port() -> Iterator[int]:
    with hello_server("hello") as port:
        yield port


class Instances:
    """Per instance, an sshd on loopback configured from the user data EC2 holds for it."""

    def __init__(self, ec2: Any, folder: Path) -> None:
        self.ec2, self.folder = ec2, folder
        self.sshds: dict[str, Sshd] = {}
        self.lock = threading.Lock()

    def resolve(self, target: TunnelTarget) -> TunnelTarget:
        with self.lock:
            if target.replica_id not in self.sshds:
                (inst,) = cloud.instances_tagged(self.ec2, "tidegate:replica", target.replica_id)
                raw = self.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
                script = base64.b64decode(raw["UserData"]["Value"]).decode()
                self.sshds[target.replica_id] = Sshd(script, self.folder / target.replica_id).start()
            return dataclasses.replace(target, host="127.0.0.1", port=self.sshds[target.replica_id].port)

    def close(self) -> None:
        for sshd in self.sshds.values():
            sshd.close()


@pytest.fixture
def instances(ec2: Any, tmp_path: Path) -> Iterator[Instances]:
    require_sshd()
    made = Instances(ec2, tmp_path / "instances")
    try:
        yield made
    finally:
        made.close()


class Recording:
    """The EC2 client, keeping the arguments of every `run_instances`."""

    def __init__(self, ec2: Any) -> None:
        self.ec2 = ec2
        self.launches: list[dict[str, Any]] = []

    def run_instances(self, **kwargs: Any) -> Any:
        self.launches.append(kwargs)
        return self.ec2.run_instances(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ec2, name)


def machine(local: Path, instances: Instances | None) -> CloudTunnels:
    return CloudTunnels(
        local, "aws", active=True, backoff=Backoff(0.05, 0.5), connect_timeout=3.0,
        resolve=instances.resolve if instances else None,
    )  # fmt: skip


def copy_keys(source: Path, dest: Path) -> None:
    """What the operator does out of band (README): the two files, modes kept."""
    dest.mkdir(parents=True, mode=0o700)
    for name in ("id_ed25519", "host_key_secret"):
        shutil.copy2(source / name, dest / name)


def wait_running(backend: AwsBackend, replica_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = backend.describe(replica_id)
        if info is not None and info.status is ReplicaStatus.RUNNING and info.address:
            return info.address
        time.sleep(0.2)
    raise AssertionError(f"{replica_id} not running with an address")


def wait_ready(address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not probe_replica(address, None).ready:
        assert time.monotonic() < deadline, f"{address} never answered"
        time.sleep(0.1)


@pytest.mark.slow  # moto, two sshd-backed tunnels, etcd: ~10 s on 2 busy cores
def test_a_second_machine_with_copied_keys_leads_and_reaches_the_first_leaders_instance(
    etcd_cluster: EtcdCluster,
    make_aws: Callable[..., AwsBackend],
    aws_settings: AwsSettings,
    ec2: Any,
    instances: Instances,
    service_port: int,
    tmp_path: Path,
) -> None:
    from tests.backends.test_aws import spec_for

    location = EtcdLocation.parse(etcd_cluster.url())
    client = EtcdClient(location)
    spec = spec_for("llm", port=service_port)
    # The forward-only user must exist on this machine for the loopback sshd.
    settings = aws_settings.model_copy(update={"tunnel_user": "nobody", "allowed_cidr": "127.0.0.1/32"})

    # Machine 1 leads first: creates and records its key material, launches the instance.
    local1 = tmp_path / "m1"
    first_line = tunnel_keys.check(client, location, local1 / "ssh", lead=True)
    assert str(local1 / "ssh") in first_line
    record = tunnel_keys.recorded(client, location)
    assert record is not None and record["client"].startswith("SHA256:")
    secret = (local1 / "ssh" / "host_key_secret").read_bytes()
    stored = client.get(location.key(tunnel_keys.TUNNEL_KEYS_KEY))
    assert stored is not None and secret not in stored.value and b"PRIVATE KEY" not in stored.value
    recording = Recording(ec2)
    m1 = make_aws(settings=settings, tunnels=machine(local1, instances), client_factory=lambda region: recording)
    try:
        m1.create(spec)
        wait_ready(wait_running(m1, spec.replica_id))
    finally:
        m1.close()  # the leader dies; its instance keeps running

    # Machine 2: another local state dir with the key folder copied. It passes the check, and its
    # own tunnel reaches the instance (the pinned host key and the client key both hold).
    local2 = tmp_path / "m2"
    copy_keys(local1 / "ssh", local2 / "ssh")
    assert "holds the installation's" in tunnel_keys.check(client, location, local2 / "ssh", lead=True)
    m2 = make_aws(settings=settings, tunnels=machine(local2, instances), client_factory=lambda region: recording)
    try:
        address = wait_running(m2, spec.replica_id)
        assert address.startswith(f"unix://{local2}") or "tidegate-" in address
        wait_ready(address)
        info = m2.describe(spec.replica_id)
        assert info is not None and info.tunnel is not None
        tags = {t["Key"]: t["Value"] for t in cloud.instances_tagged(ec2, "tidegate:replica", spec.replica_id)[0]["Tags"]}
        assert info.tunnel.host_key == tags["tidegate:hostkey"] and info.tunnel.service_port == service_port
        # A retried launch from this machine is the same request, byte for byte (EC2 ClientToken).
        m2._launch(spec, m2._offers.candidates(spec)[0], 0)
        first, again = recording.launches[0], recording.launches[-1]
        assert again["ClientToken"] == first["ClientToken"] and again["UserData"] == first["UserData"]
    finally:
        m2.delete(spec.replica_id)
        m2.close()
    sshd_log = instances.sshds[spec.replica_id].log_text()
    assert sshd_log.count("Accepted publickey for nobody") >= 2  # machine 1, then machine 2


def test_a_machine_with_other_keys_or_none_is_refused_naming_the_folder(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    location = EtcdLocation.parse(etcd_cluster.url())
    client = EtcdClient(location)
    tunnel_keys.check(client, location, tmp_path / "m1" / "ssh", lead=True)
    # A standby that has not led yet checks without recording anything.
    other = tmp_path / "m3" / "ssh"
    CloudTunnels(tmp_path / "m3", "aws").keys.ensure()  # its own, fresh key material
    with pytest.raises(tunnel_keys.TunnelKeysError) as refused:
        tunnel_keys.check(client, location, other, lead=True)
    message = str(refused.value)
    assert f"the tunnel keys in {other} are not the installation's" in message
    assert "client key and host-key secret differ" in message
    assert f"ssh/{{id_ed25519,host_key_secret}} {other}/" in message and "`tidegate up`" in message
    assert (other / "id_ed25519").read_bytes() not in message.encode()
    # The client key alone copied: the host-key secret still differs, and is named.
    shutil.copy2(tmp_path / "m1" / "ssh" / "id_ed25519", other / "id_ed25519")
    with pytest.raises(tunnel_keys.TunnelKeysError, match="their host-key secret differ"):
        tunnel_keys.check(client, location, other, lead=False)
    empty = tmp_path / "m4" / "ssh"
    with pytest.raises(tunnel_keys.TunnelKeysError, match=f"this machine has no tunnel keys in {empty}"):
        tunnel_keys.check(client, location, empty, lead=True)
    assert not empty.exists()  # nothing was created: the operator's copy goes there


@pytest.mark.slow  # a `tidegate up` process: ~5 s
def test_tidegate_up_with_other_keys_exits_with_the_message_not_a_traceback(
    etcd_cluster: EtcdCluster, moto_url: str, linux_ami: str, tmp_path: Path
) -> None:
    url = etcd_cluster.url()
    location = EtcdLocation.parse(url)
    tunnel_keys.check(EtcdClient(location), location, tmp_path / "m1" / "ssh", lead=True)
    local = tmp_path / "m2"
    CloudTunnels(local, "aws").keys.ensure()
    settings = tmp_path / "settings.yml"
    settings.write_text(
        f"backends:\n  aws:\n    regions: [us-east-1]\n    endpoint_url: {moto_url}\n    ami: {linux_ami}\n"
        "    allowed_cidr: 127.0.0.1/32\n"
    )
    bare, _ = bare_remote(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")} | cloud.FAKE_ENV
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", str(bare), "--state", url,
         "--local-state", str(local), "--settings", str(settings), "--listen", "127.0.0.1:0", "--interval", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"error: the tunnel keys in {local / 'ssh'} are not the installation's" in out
    assert "Traceback" not in out
    assert "leading" not in out  # it never campaigned


def start_up(url: str, local: Path, settings: Path, repo: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")} | cloud.FAKE_ENV
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", str(repo), "--state", url,
             "--local-state", str(local), "--settings", str(settings), "--listen", "127.0.0.1:0",
             "--interval", "1", "--no-gateway"],
            cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace") if log.exists() else ""
        if text in out:
            return out
        assert proc.poll() is None, out
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log}: {log.read_text()[-3000:]}")


@pytest.mark.slow  # two `tidegate up` processes one after the other: ~15 s
def test_the_first_up_records_the_keys_and_an_up_on_another_machine_with_the_copy_leads(
    etcd_cluster: EtcdCluster, moto_url: str, linux_ami: str, tmp_path: Path
) -> None:
    url = etcd_cluster.url()
    settings = tmp_path / "settings.yml"
    settings.write_text(
        f"backends:\n  aws:\n    regions: [us-east-1]\n    endpoint_url: {moto_url}\n    ami: {linux_ami}\n"
        "    allowed_cidr: 127.0.0.1/32\n"
    )
    bare, _ = bare_remote(tmp_path)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    first = start_up(url, m1, settings, bare, tmp_path / "up1.log")
    try:
        out = wait_for_line(tmp_path / "up1.log", "holds the installation's", first)
        assert f"tunnel keys: none recorded on etcd yet (the first leader records those in {m1 / 'ssh'})" in out
        assert f"tunnel keys: {m1 / 'ssh'} holds the installation's" in out
    finally:
        stop_up(first)
    location = EtcdLocation.parse(url)
    record = tunnel_keys.recorded(EtcdClient(location), location)
    assert record is not None and record["client"] == CloudTunnels(m1, "aws").keys.fingerprint().client  # type: ignore[union-attr]
    copy_keys(m1 / "ssh", m2 / "ssh")
    second = start_up(url, m2, settings, bare, tmp_path / "up2.log")
    try:
        # The key check is said at start; the second `up` may stand by until the first one's
        # leadership is gone, then leads.
        out = wait_for_line(tmp_path / "up2.log", "tidegate up: leading", second)
        assert "holds the installation's" in out and "error" not in out.lower()
    finally:
        stop_up(second)
    assert second.returncode == 0
