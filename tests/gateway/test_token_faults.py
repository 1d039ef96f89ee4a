"""A tokens.json that cannot be read: the commands name the file, the gateway keeps the last good
tokens and says so (log once, /healthz 503), a newer schema is refused and never rewritten."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.access.tokens import (
    TOKENS_FILE,
    AuthResult,
    TokenError,
    TokenStore,
    create_token,
    load_records,
    revoke_token,
)
from reconciler.cli.main import main

BROKEN = [
    pytest.param(b'{"schema_version": 1, "tok', "not valid JSON", id="truncated"),
    pytest.param(b"", "the file is empty", id="empty"),
    pytest.param(b'{"schema_version": 1, "tokens": [{"name": "x"}]}', "malformed", id="entry-missing-keys"),
    pytest.param(b'{"schema_version": 99, "tokens": [], "future": 1}', "schema_version 99", id="newer-schema"),
    pytest.param(b"[]", "expected a JSON object", id="not-an-object"),
]


@pytest.mark.parametrize(("content", "why"), BROKEN)
def test_token_commands_name_the_file_and_never_rewrite_it(
    tmp_path: Path, content: bytes, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_bytes(content)
    with pytest.raises(TokenError, match=why):
        load_records(tmp_path)
    for argv in (["token", "list"], ["token", "create", "me"], ["token", "revoke", "me"]):
        assert main([*argv, "--state", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and why in err and "Traceback" not in err
    assert path.read_bytes() == content  # refused, never rewritten


def test_gateway_keeps_the_last_good_tokens_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = create_token(tmp_path, "me")
    store = TokenStore(tmp_path, recheck=0)
    assert store.check(f"Bearer {token}".encode(), 1.0) is AuthResult.OK and store.error is None
    path = tmp_path / TOKENS_FILE
    with caplog.at_level(logging.ERROR, logger="tidegate.gateway.tokens"):
        for i, content in enumerate([b"{not json", b"{not json!"]):
            path.write_bytes(content)
            for t in range(3):
                assert store.check(f"Bearer {token}".encode(), 2.0 + i * 10 + t) is AuthResult.OK
    assert store.error is not None and str(path) in store.error
    errors = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(errors) == 1, "once per distinct problem, not per check"
    revoke_token_file = {"schema_version": 1, "tokens": []}
    path.write_text(json.dumps(revoke_token_file))
    assert store.check(f"Bearer {token}".encode(), 100.0) is AuthResult.INVALID and store.error is None


def test_a_gateway_started_on_a_broken_file_has_no_tokens_and_an_error(tmp_path: Path) -> None:
    (tmp_path / TOKENS_FILE).write_text('{"schema_version": 99, "tokens": []}')
    store = TokenStore(tmp_path)
    assert store.error is not None and "schema_version 99" in store.error
    assert store.check(b"Bearer tg_x", 1.0) is AuthResult.INVALID


def test_revoke_of_an_unknown_name_is_still_a_clear_error(tmp_path: Path) -> None:
    create_token(tmp_path, "a")
    with pytest.raises(TokenError, match="no token named 'b'"):
        revoke_token(tmp_path, "b")
