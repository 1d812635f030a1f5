"""Invariant 8: secrets are references, resolved only on workers, and never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmctl.errors import ConfigError, UserError
from slurmctl.secrets import (
    SECRET_NAME_RE,
    check_no_literal_secrets,
    collect_secret_values,
    redact,
    referenced_names,
    resolve,
    unresolved_refs,
)

LEAK = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(
    "name", ["api_token", "TOKEN", "client_secret", "db_password", "passwd", "apiKey",
             "slack_webhook", "aws_credentials", "Authorization"],
)  # fmt: skip
def test_secret_like_names(name: str) -> None:
    assert SECRET_NAME_RE.search(name)
    with pytest.raises(ConfigError) as info:
        check_no_literal_secrets({name: LEAK})
    message = str(info.value)
    assert message.startswith(f'params.{name}: looks like a secret written literally; write "${{')
    assert LEAK not in message


def test_exact_message_and_nested_paths() -> None:
    with pytest.raises(ConfigError) as info:
        check_no_literal_secrets({"auth": {"headers": [{"api_key": LEAK}]}}, where="job.params")
    assert str(info.value) == (
        "job.params.auth.headers[0].api_key: looks like a secret written literally; write "
        '"${API_KEY}" and export API_KEY in the workers\' environment (or "${file:/path}")'
    )
    with pytest.raises(ConfigError, match=r"^params\.secrets\.primary: "):
        check_no_literal_secrets({"secrets": {"primary": LEAK}})  # inherited from the parent name
    with pytest.raises(ConfigError, match=r"^params\.api_keys\[1\]: "):
        check_no_literal_secrets({"api_keys": ["${A}", LEAK]})


def test_references_and_harmless_values_pass() -> None:
    check_no_literal_secrets(
        {
            "api_token": "${API_TOKEN}",
            "password": "${file:/run/secrets/db}",
            "auth_header_token": "Bearer ${TOKEN}",
            "max_tokens": 100,
            "key_size": 2048,
            "verify_token": True,
            "webhook": None,
            "secret": "",
            "base_url": "https://example.com",
            "note": "costs $${5}",
        }
    )


@pytest.mark.parametrize(
    "params",
    [{"api_key": 8412763395561230}, {"auth": {"password": 1234.5}}, {"headers": [{"token": 42}]}],
)
def test_a_number_under_a_secret_like_name_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="looks like a secret written literally \\(a number\\)"):
        check_no_literal_secrets(params)


def test_escaped_reference_is_literal() -> None:
    with pytest.raises(ConfigError):
        check_no_literal_secrets({"token": "$${NOT_A_REF}"})


def test_malformed_reference() -> None:
    with pytest.raises(ConfigError, match=r"^params\.url: unclosed reference"):
        check_no_literal_secrets({"url": "http://x/${ID"})
    with pytest.raises(ConfigError, match=r"^params\.url: malformed reference"):
        check_no_literal_secrets({"url": "http://x/${}"})


def test_resolve_env_embedded_and_deep_copy() -> None:
    params = {"a": {"token": "${TOK}"}, "h": ["Bearer ${TOK}", 3], "lit": "$${TOK} ${TOK}$${"}
    out = resolve(params, env={"TOK": "s3cr3t"})
    assert out == {"a": {"token": "s3cr3t"}, "h": ["Bearer s3cr3t", 3], "lit": "${TOK} s3cr3t${"}
    assert params["a"] == {"token": "${TOK}"}  # the original is untouched
    out["h"].append(1)
    assert len(params["h"]) == 2


def test_resolve_missing_variable() -> None:
    with pytest.raises(UserError) as info:
        resolve({"api_token": "${API_TOKEN}"}, env={})
    assert str(info.value) == (
        "params.api_token: environment variable API_TOKEN is not set (needed by ${API_TOKEN})"
    )


def test_resolve_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMCTL_TEST_SECRET", "v4lue")
    assert resolve("${SLURMCTL_TEST_SECRET}") == "v4lue"


def test_file_references(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("file-secret\n")
    assert resolve({"t": f"${{file:{tmp_path}/tok}}"}, env={}) == {"t": "file-secret"}
    assert resolve("${file:tok}", env={}, base_dir=tmp_path) == "file-secret"
    with pytest.raises(UserError) as info:
        resolve({"t": "${file:/nonexistent/tok}"}, env={})
    assert str(info.value) == (
        "params.t: cannot read secret file /nonexistent/tok (needed by ${file:/nonexistent/tok}): "
        "No such file or directory"
    )


def test_collect_secret_values_and_redact(tmp_path: Path) -> None:
    (tmp_path / "pem").write_text("-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----\n")
    params = {
        "token": "${TOK}", "h": "Bearer ${TOK}", "short": "${S}", "k": "${file:pem}",
        "missing": "${NOPE}", "plain": "hello",
    }  # fmt: skip
    env = {"TOK": "s3cr3t-value", "S": "ab"}
    values = collect_secret_values(params, env=env, base_dir=tmp_path)
    assert values[:2] == ["s3cr3t-value", "ab"] and len(values) == 3
    text = "failed: Authorization: Bearer s3cr3t-value (ab) line AAAABBBBCCCCDDDD"
    assert redact(text, values) == "failed: Authorization: Bearer *** (ab) line ***"
    assert redact("nothing here", []) == "nothing here"


def test_unresolved_and_referenced_names(tmp_path: Path) -> None:
    params = {"a": "${A}", "b": ["${B} and ${A}"], "f": "${file:/nonexistent}", "c": "$${C}"}
    assert referenced_names(params) == ["A", "B"]
    assert unresolved_refs(params, env={"A": "x"}) == ["B", "file:/nonexistent"]
    assert unresolved_refs({"x": "${A}"}, env={"A": ""}) == []
