"""Drills against a real etcd with client TLS (certificates made in the test) and one with auth on.

TLS: `token create`, `ps`, `gateway` (and, slow, `up`) work with --etcd-cacert/--etcd-cert/--etcd-key;
a wrong CA, no CA, a missing file or no client certificate is refused with one line naming the
option, never a traceback. Auth: the right user works; a wrong password, no user, or a user whose
role does not cover the prefix is one clear line; the password is nowhere: not in any output or
log, not on etcd, not in the local state.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.e2e.helpers import APP, Remote, kill_replicas, service_yaml, wait_for
from tests.etcd.gateways import GatewayProc, Up, tidegate
from tests.support.etcd_secure import AUTH_PREFIX, OTHER_PREFIX, Pki, SecureEtcd
from tests.support.git_repo import bare_remote
from tidegate.etcd import EtcdClient, EtcdLocation, EtcdRefused

USER_ENV = "TIDEGATE_ETCD_USER"
PASSWORD_ENV = "TIDEGATE_ETCD_PASSWORD"


def tls_args(pki: Pki, ca: Path | None = None, client: bool = True) -> list[str]:
    args = ["--etcd-cacert", str(ca or pki.ca)] if ca != Path("-") else []
    if client:
        args += ["--etcd-cert", str(pki.client_cert), "--etcd-key", str(pki.client_key)]
    return args


def one_clear_line(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A failed command that said one line naming `needles`, and no traceback."""
    assert run.returncode != 0, run.stdout
    text = run.stdout + run.stderr
    assert "Traceback" not in text, text
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def gateway_refused(gw: GatewayProc, *needles: str) -> str:
    code = gw.proc.wait(30)
    text = gw.log.read_text()
    assert code != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_secret_in(secret: str, texts: Iterable[str], folders: Iterable[Path] = ()) -> None:
    for text in texts:
        assert secret not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


# -- TLS ---------------------------------------------------------------------------------------
def test_the_client_over_tls_reads_writes_and_watches(etcd_tls: SecureEtcd, etcd_pki: Pki) -> None:
    """With $REQUESTS_CA_BUNDLE pointing elsewhere (as on many hosts), --etcd-cacert still wins."""
    loc = EtcdLocation.parse(
        etcd_tls.url("tg-tls-client"), cacert=str(etcd_pki.ca), cert=str(etcd_pki.client_cert), key=str(etcd_pki.client_key)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", str(etcd_pki.other_ca))
        client = EtcdClient(loc)
        client.probe(write=True)
        revision = client.put(loc.key("a"), b"1")
        stop = threading.Event()
        events = client.watch_prefix(loc.key(""), revision, stop)
        assert next(events)[1].value == b"1"
        stop.set()
        assert client.get(loc.key("a")) is not None


@pytest.mark.slow
def test_token_ps_and_gateway_over_tls_with_client_certificates(
    etcd_tls: SecureEtcd, etcd_pki: Pki, tmp_path: Path
) -> None:
    url = etcd_tls.url("tg-tls-basic")
    created = tidegate("token", "create", "ops", "--admin", "--state", url, *tls_args(etcd_pki))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1].split()[-1]
    assert token.startswith("tg_"), created.stdout
    listed = tidegate("token", "list", "--state", url, *tls_args(etcd_pki))
    assert listed.returncode == 0 and "ops" in listed.stdout, listed.stderr
    ps = tidegate("ps", "--state", url, "--local-state", str(tmp_path / "ps-local"), *tls_args(etcd_pki))
    assert ps.returncode == 0, ps.stderr
    gw = GatewayProc(url, tmp_path / "gw-local", tmp_path / "gw.log", tuple(tls_args(etcd_pki)))
    try:
        gw.wait_ready()
        wait_for(lambda: gw.models(token) == 200, 20, "the gateway to accept the token it read from etcd over TLS")
        assert gw.models("tg_not-a-token") in (401, 403)
        elsewhere = gw.http.get("/api/v1/services", headers={"Authorization": f"Bearer {token}"})
        assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "control_not_here"
    finally:
        gw.close()
    assert "Traceback" not in gw.log.read_text()


# Each case runs a `tidegate` process (a gateway waits for its refusal): slow, 16 cases ~60 s.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "case", "needles"),
    [
        ("token", "wrong-ca", ("--etcd-cacert", "other-ca.pem", "not signed by the CA")),
        ("ps", "wrong-ca", ("--etcd-cacert", "not signed by the CA")),
        ("gateway", "wrong-ca", ("--etcd-cacert", "not signed by the CA")),
        ("token", "no-ca", ("--etcd-cacert FILE", "not trusted")),
        ("gateway", "no-ca", ("--etcd-cacert FILE", "not trusted")),
        ("ps", "missing-ca-file", ("--etcd-cacert", "no such file")),
        ("token", "no-client-cert", ("--etcd-cert FILE", "--etcd-key FILE")),
        ("gateway", "no-client-cert", ("--etcd-cert FILE", "--etcd-key FILE")),
        ("ps", "plain-etcd-url", ("etcds://",)),
    ],
)
def test_tls_misconfiguration_is_one_clear_line(
    etcd_tls: SecureEtcd, etcd_pki: Pki, tmp_path: Path, command: str, case: str, needles: tuple[str, ...]
) -> None:
    url = etcd_tls.url("tg-tls-bad")
    args = {
        "wrong-ca": tls_args(etcd_pki, ca=etcd_pki.other_ca),
        "no-ca": tls_args(etcd_pki, ca=Path("-")),
        "missing-ca-file": tls_args(etcd_pki, ca=tmp_path / "nowhere.pem"),
        "no-client-cert": tls_args(etcd_pki, client=False),
        "plain-etcd-url": [],
    }[case]
    if case == "plain-etcd-url":
        url = url.replace("etcds://", "etcd://")
    if command == "gateway":
        gw = GatewayProc(url, tmp_path / "gw-local", tmp_path / "gw.log", tuple(args))
        try:
            gateway_refused(gw, *needles)
        finally:
            gw.close()
        return
    argv = ["token", "create", "x"] if command == "token" else ["ps", "--local-state", str(tmp_path / "l")]
    one_clear_line(tidegate(*argv, "--state", url, *args), *needles)


# -- auth --------------------------------------------------------------------------------------
def auth_env(etcd: SecureEtcd, user: str, password: str | None = None) -> dict[str, str]:
    return {USER_ENV: user, PASSWORD_ENV: etcd.users[user] if password is None else password}


@pytest.mark.slow  # CLI processes / token expiry waits, 4-6 s
def test_auth_right_user_works_and_the_password_is_nowhere(etcd_auth: SecureEtcd, tmp_path: Path) -> None:
    url = etcd_auth.url(AUTH_PREFIX)
    env = auth_env(etcd_auth, "tidegate")
    secret = env[PASSWORD_ENV]
    outputs: list[str] = []
    created = tidegate("token", "create", "ops", "--admin", "--state", url, env=env)
    outputs += [created.stdout, created.stderr]
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1].split()[-1]
    ps = tidegate("ps", "--state", url, "--local-state", str(tmp_path / "ps-local"), env=env)
    outputs += [ps.stdout, ps.stderr]
    assert ps.returncode == 0, ps.stderr
    gw = GatewayProc(url, tmp_path / "gw-local", tmp_path / "gw.log", env=env)
    try:
        gw.wait_ready()
        wait_for(lambda: gw.models(token) == 200, 20, "the gateway to accept the token read with auth")
    finally:
        gw.close()
    outputs.append(gw.log.read_text())
    root = EtcdClient(EtcdLocation.parse(url, environ=auth_env(etcd_auth, "root")))
    kvs, _ = root.get_prefix("/")
    assert kvs, "nothing on etcd"
    outputs += [kv.key + kv.value.decode(errors="replace") for kv in kvs]
    no_secret_in(secret, outputs, [tmp_path])


# Each case runs a `tidegate` process (a gateway waits for its refusal): slow, 16 cases ~60 s.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "case", "needles"),
    [
        ("token", "wrong-password", (USER_ENV, PASSWORD_ENV, "wrong user or password", "'tidegate'")),
        ("ps", "wrong-password", ("wrong user or password",)),
        ("gateway", "wrong-password", ("wrong user or password",)),
        ("token", "no-user", ("authentication enabled", USER_ENV, PASSWORD_ENV)),
        ("token", "outsider", ("permission denied", "'outsider'", f"/{AUTH_PREFIX}/", "readwrite")),
        ("ps", "outsider", ("permission denied", "'outsider'")),
        ("gateway", "outsider", ("permission denied", "'outsider'")),
    ],
)
def test_auth_refusals_are_one_clear_line_without_the_password(
    etcd_auth: SecureEtcd, tmp_path: Path, command: str, case: str, needles: tuple[str, ...]
) -> None:
    url = etcd_auth.url(AUTH_PREFIX)
    env = {
        "wrong-password": auth_env(etcd_auth, "tidegate", "not-the-password-xyz"),
        "no-user": {},
        "outsider": auth_env(etcd_auth, "outsider"),
    }[case]
    if command == "gateway":
        gw = GatewayProc(url, tmp_path / "gw-local", tmp_path / "gw.log", env=env)
        try:
            line = gateway_refused(gw, *needles)
        finally:
            gw.close()
    else:
        argv = ["token", "create", "x"] if command == "token" else ["ps", "--local-state", str(tmp_path / "l")]
        line = one_clear_line(tidegate(*argv, "--state", url, env=env), *needles)
    secrets = [*etcd_auth.users.values(), *([env[PASSWORD_ENV]] if PASSWORD_ENV in env else [])]
    for secret in secrets:
        no_secret_in(secret, [line], [tmp_path])


def test_credentials_in_the_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    url = "etcd://tidegate:hunter2-secret@127.0.0.1:2379/prod"
    for argv in (["ps", "--local-state", str(tmp_path / "l")], ["token", "create", "x"]):
        run = tidegate(*argv, "--state", url)
        line = one_clear_line(run, "takes no user or password", USER_ENV, PASSWORD_ENV)
        assert "hunter2" not in run.stdout + run.stderr, line


def test_the_outsider_keeps_to_its_own_prefix(etcd_auth: SecureEtcd) -> None:
    """The role works as granted: its own prefix is fine (so the refusal above is the prefix's)."""
    url = etcd_auth.url(OTHER_PREFIX)
    run = tidegate("token", "create", "mine", "--state", url, env=auth_env(etcd_auth, "outsider"))
    assert run.returncode == 0, run.stderr


def test_a_read_only_role_is_refused_before_a_leader_would_write(etcd_auth: SecureEtcd) -> None:
    client = EtcdClient(EtcdLocation.parse(etcd_auth.url(AUTH_PREFIX), environ=auth_env(etcd_auth, "reader")))
    client.probe()  # reading is allowed
    with pytest.raises(EtcdRefused, match=r"permission denied for user 'reader'.*readwrite"):
        client.probe(write=True)
    root = EtcdClient(EtcdLocation.parse(etcd_auth.url(AUTH_PREFIX), environ=auth_env(etcd_auth, "root")))
    assert root.get(f"/{AUTH_PREFIX}/probe") is None  # the write probe writes nothing


@pytest.mark.slow  # CLI processes / token expiry waits, 4-6 s
def test_an_expired_auth_token_is_renewed(tmp_path: Path) -> None:
    """etcd's simple tokens expire (--auth-token-ttl, 300 s by default): the client authenticates
    again and the call goes through."""
    etcd = SecureEtcd(tmp_path / "etcd", extra=("--auth-token-ttl", "1"))
    try:
        etcd.start()
        etcd.enable_auth()
        client = EtcdClient(EtcdLocation.parse(etcd.url(AUTH_PREFIX), environ=auth_env(etcd, "tidegate")))
        client.put(f"/{AUTH_PREFIX}/a", b"1")
        time.sleep(2.5)
        client.put(f"/{AUTH_PREFIX}/b", b"2")
        kvs, _ = client.get_prefix(f"/{AUTH_PREFIX}/")
        assert [kv.value for kv in kvs] == [b"1", b"2"]
    finally:
        etcd.close()


@pytest.mark.slow
def test_a_gateway_keeps_following_etcd_after_its_auth_token_expired(tmp_path: Path) -> None:
    etcd = SecureEtcd(tmp_path / "etcd", extra=("--auth-token-ttl", "1"))
    env = {}
    gw = None
    try:
        etcd.start()
        etcd.enable_auth()
        env = auth_env(etcd, "tidegate")
        url = etcd.url(AUTH_PREFIX)
        gw = GatewayProc(url, tmp_path / "gw-local", tmp_path / "gw.log", env=env)
        gw.wait_ready()
        time.sleep(3)  # the gateway's token has expired
        created = tidegate("token", "create", "late", "--state", url, env=env)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1].split()[-1]
        wait_for(lambda: gw.models(token) == 200, 30, "the gateway to see a token made after its auth token expired")
    finally:
        if gw is not None:
            gw.close()
        etcd.close()
    assert "Traceback" not in gw.log.read_text()


# -- up (slow) ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_up_over_tls_leads_and_serves_and_a_wrong_ca_stops_it(
    etcd_tls: SecureEtcd, etcd_pki: Pki, tmp_path: Path
) -> None:
    url = etcd_tls.url("tg-tls-up")
    bare, work = bare_remote(tmp_path)
    (work / "app.py").write_text(APP)
    remote = Remote(bare, work)
    remote.push({"web.dstack.yml": service_yaml("web", greeting="tls")}, message="v1")
    bad = Up(url, remote.url, tmp_path / "bad-local", tmp_path / "bad.log", extra_args=tuple(
        tls_args(etcd_pki, ca=etcd_pki.other_ca)))  # fmt: skip
    try:
        assert bad.proc.wait(60) != 0
    finally:
        bad.stop()
    text = bad.log.read_text()
    assert "Traceback" not in text and "--etcd-cacert" in text, text
    local = tmp_path / "local"
    up = Up(url, remote.url, local, tmp_path / "up.log", extra_args=tuple(tls_args(etcd_pki)))
    try:
        wait_for(lambda: up.get("/").json()["greeting"] == "tls", 120, "up over TLS to serve web")
        ps = tidegate("ps", "--json", "--state", url, "--local-state", str(tmp_path / "elsewhere"), *tls_args(etcd_pki))
        assert ps.returncode == 0, ps.stderr
        assert [s["name"] for s in json.loads(ps.stdout)["services"]] == ["web"]
    finally:
        up.stop()
        kill_replicas(local)
    assert "Traceback" not in up.log.read_text()


@pytest.mark.slow
def test_up_with_auth_leads_and_a_wrong_password_stops_it(etcd_auth: SecureEtcd, tmp_path: Path) -> None:
    url = etcd_auth.url(AUTH_PREFIX + "/up")
    bare, work = bare_remote(tmp_path)
    (work / "app.py").write_text(APP)
    remote = Remote(bare, work)
    remote.push({"web.dstack.yml": service_yaml("web", greeting="auth")}, message="v1")
    wrong = auth_env(etcd_auth, "tidegate", "not-the-password-xyz")
    bad = Up(url, remote.url, tmp_path / "bad-local", tmp_path / "bad.log", extra_env=wrong)
    try:
        assert bad.proc.wait(60) != 0
    finally:
        bad.stop()
    text = bad.log.read_text()
    assert "Traceback" not in text and "wrong user or password" in text, text
    env = auth_env(etcd_auth, "tidegate")
    local = tmp_path / "local"
    up = Up(url, remote.url, local, tmp_path / "up.log", extra_env=env)
    try:
        wait_for(lambda: up.get("/").json()["greeting"] == "auth", 120, "up with auth to serve web")
    finally:
        up.stop()
        kill_replicas(local)
    root = EtcdClient(EtcdLocation.parse(url, environ=auth_env(etcd_auth, "root")))
    kvs, _ = root.get_prefix("/")
    no_secret_in(
        env[PASSWORD_ENV],
        [up.log.read_text(), text, *(kv.value.decode(errors="replace") for kv in kvs)],
        [local, tmp_path / "bad-local"],
    )
