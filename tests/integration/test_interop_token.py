"""The independent peer's token case: aiomoqt 0.5.3 publishing and subscribing through our relay with authorization ON.

The relay runs with `--config` holding tokens for interop/token. aiomoqt sends its AUTHORIZATION TOKEN parameter as
draft-14's Token structure (section 9.2.1.1: Alias Type USE_VALUE 0x3, Token Type 0, Token Value) - checked byte
for byte below against its own serializer - so the relay accepts it through the structure, not through its
raw-bytes fallback. Right tokens: PUBLISH_NAMESPACE_OK, SUBSCRIBE_OK and objects end to end. Wrong or missing
token: PUBLISH_NAMESPACE_ERROR / SUBSCRIBE_ERROR UNAUTHORIZED (0x1), and the relay keeps serving.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.auth import Action, Authorizer, Rule, Token
from relay.moqt import messages as M
from tests.integration.relay_process import (
    AIOMOQT_MISSING,
    INTEROP_PYTHON,
    RELAY_MISSING,
    LineReader,
    RelayProcess,
    have_aiomoqt,
    have_relay,
    running_relay,
    stop,
)
from tests.integration.test_interop_aiomoqt import CASES, parse_tap
from tests.support import REPO, require

PEER = REPO / "tests" / "interop_peer" / "aiomoqt_token_peer.py"
CONFIG = """
[auth]
default = "allow"

[[auth.rule]]
namespace = "interop/token"
publish = ["pub-secret"]
subscribe = ["viewer-secret"]

[[auth.rule]]
namespace = "moq-test/interop"   # aiomoqt's own interop client: "interop-test" on PUBLISH_NAMESPACE only
publish = ["interop-test"]         # (its SUBSCRIBEs carry no token, so subscribing stays open there)
"""
UNAUTHORIZED = 0x1


def peer(relay: RelayProcess, *args: str) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen([str(INTEROP_PYTHON), str(PEER), "--url", relay.url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


def said(reader: LineReader, proc: subprocess.Popen[str], prefix: str, timeout: float = 15) -> str:
    line = reader.wait_for(prefix, timeout)
    if line is None:
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(f"aiomoqt peer never said {prefix!r}: {reader.text()} {err[-2000:]}")
    return line.strip()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    require(have_relay(), RELAY_MISSING)
    require(have_aiomoqt(), AIOMOQT_MISSING)
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG)
    with running_relay(tmp_path / "relay", extra=["--config", str(config)]) as proc:
        yield proc


@pytest.mark.interop
def test_aiomoqt_sends_a_draft14_token_structure() -> None:
    """Who is right: aiomoqt 0.5.3 wraps the token as draft-14 says; our codec and Authorizer read it as such."""
    require(have_aiomoqt(), AIOMOQT_MISSING)
    code = ("from aiomoqt.messages import Subscribe; from aiomoqt.types import ParamType;"
            "print(Subscribe(request_id=0, track_namespace=(b'interop', b'token'), track_name=b'video', priority=128,"
            " group_order=1, forward=1, filter_type=2, parameters={ParamType.AUTH_TOKEN: b'viewer-secret'})"
            ".serialize().data.hex())")
    out = subprocess.run([str(INTEROP_PYTHON), "-c", code], capture_output=True, text=True, timeout=30, check=True)
    msg, _ = M.decode_control(bytes.fromhex(out.stdout.strip()))
    assert isinstance(msg, M.Subscribe)
    value = M.get_parameter(msg.parameters, M.VersionParameter.AUTHORIZATION_TOKEN)
    assert value == b"\x03\x00viewer-secret"  # Alias Type USE_VALUE, Token Type 0, Token Value
    token = M.decode_auth_token(value)
    assert token == M.AuthToken(M.AuthTokenAliasType.USE_VALUE, None, 0, b"viewer-secret")
    rule = Rule((b"interop", b"token"), Action.SUBSCRIBE, (Token(b"viewer-secret"),))
    assert Authorizer((rule,)).check(Action.SUBSCRIBE, msg.track_namespace, msg.parameters) is None


@pytest.mark.interop
def test_aiomoqt_with_the_right_tokens_publishes_and_subscribes(relay: RelayProcess) -> None:
    pub, pub_out = peer(relay, "--role", "pub", "--token", "pub-secret", "--objects", "20")
    sub: subprocess.Popen[str] | None = None
    try:
        assert said(pub_out, pub, "announced") == "announced"
        sub, sub_out = peer(relay, "--role", "sub", "--token", "viewer-secret")
        assert said(sub_out, sub, "subscribed").startswith("subscribed ")
        assert said(pub_out, pub, "done") == "done 20"
        assert said(sub_out, sub, "received") == "received 20", relay.log()[-2000:]
        assert sub.wait(15) == 0 and pub.wait(15) == 0
    finally:
        stop(pub)
        if sub is not None:
            stop(sub)


@pytest.mark.interop
@pytest.mark.parametrize("token", ["wrong", None])
def test_aiomoqt_without_the_right_token_is_unauthorized(relay: RelayProcess, token: str | None) -> None:
    extra = ["--token", token] if token is not None else []
    pub, pub_out = peer(relay, "--role", "pub", *extra)
    sub, sub_out = peer(relay, "--role", "sub", *extra)
    try:
        assert said(pub_out, pub, "refused").startswith(f"refused {UNAUTHORIZED} ")
        assert said(sub_out, sub, "refused").startswith(f"refused {UNAUTHORIZED} ")
        assert pub.wait(15) == 0 and sub.wait(15) == 0
    finally:
        stop(pub)
        stop(sub)
    assert relay.proc.poll() is None and "Traceback" not in relay.log()
    assert "secret" not in relay.log() and "wrong" not in relay.log()  # tokens are never logged


@pytest.mark.interop
def test_aiomoqt_interop_cases_pass_with_authorization_on(relay: RelayProcess) -> None:
    """aiomoqt's own six cases put AUTH_TOKEN "interop-test" on PUBLISH_NAMESPACE: with publishing under their
    namespace restricted to that token, all six still pass."""
    run = subprocess.run([str(INTEROP_PYTHON), "-m", "aiomoqt.examples.moq_interop_client", "-r", relay.url,
                          "--tls-disable-verify"], capture_output=True, text=True, timeout=60)
    results = parse_tap(run.stdout)
    assert sorted(results) == sorted(CASES), run.stdout + run.stderr[-2000:]
    assert all(ok for ok, _ in results.values()), (run.stdout, relay.log()[-3000:])
