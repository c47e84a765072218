"""Authorization: token forms, prefix rules, refusal codes (draft-14 9.2.1.1, 9.9, 9.25), and the relay applying them."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.auth import Action, AuthCode, Authorizer, Refusal, Rule, Token, token_parameter
from relay.limits import Limits
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.relay import Relay
from tests.unit.test_session_harness import Net, net, ns

__all__ = ["net"]

SECRET = b"s3cret-publisher"
VIEW = b"viewer-token"
NOW = 1_000_000.0


def authorizer(**kw: object) -> Authorizer:
    rules = (
        Rule(ns("live"), Action.PUBLISH, (Token(SECRET),)),
        Rule(ns("live"), Action.SUBSCRIBE, (Token(VIEW), Token(b"old", expires=NOW - 1))),
        Rule(ns("live", "open"), Action.SUBSCRIBE, ()),  # longer prefix wins: nobody may subscribe here
    )
    return Authorizer(rules, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


CASES: list[tuple[Action, M.Namespace, M.Parameters, Refusal | None]] = [
    (Action.PUBLISH, ns("live", "a"), (token_parameter(SECRET),), None),
    (Action.PUBLISH, ns("live", "a"), (token_parameter(SECRET, raw=True),), None),  # aiomoqt's raw bytes
    (Action.PUBLISH, ns("live", "a"), (token_parameter(VIEW),), Refusal(AuthCode.UNAUTHORIZED, "authorization token not accepted")),
    (Action.PUBLISH, ns("live"), (), Refusal(AuthCode.UNAUTHORIZED, "authorization token required")),
    (Action.SUBSCRIBE, ns("live", "b"), (token_parameter(VIEW),), None),
    (Action.SUBSCRIBE, ns("live", "b"), (token_parameter(b"old"),), Refusal(AuthCode.EXPIRED_AUTH_TOKEN, "authorization token expired")),
    (Action.SUBSCRIBE, ns("live", "b"), ((M.VersionParameter.AUTHORIZATION_TOKEN, b"\x02"),),
     Refusal(AuthCode.MALFORMED_AUTH_TOKEN, "malformed authorization token")),
    (Action.SUBSCRIBE, ns("live", "b"), ((M.VersionParameter.AUTHORIZATION_TOKEN, b"\x02\x05"),),
     Refusal(AuthCode.MALFORMED_AUTH_TOKEN, "malformed authorization token")),  # USE_ALIAS: we cache none
    (Action.SUBSCRIBE, ns("live", "open", "x"), (token_parameter(VIEW),), Refusal(AuthCode.UNAUTHORIZED, "authorization token not accepted")),
    (Action.SUBSCRIBE, ns("livestream"), (), None),  # not under a rule (whole fields): open relay
    (Action.SUBSCRIBE, ns("lives"), (), None),
]  # fmt: skip


@pytest.mark.parametrize(("action", "namespace", "params", "want"), CASES)
def test_rules_and_codes(
    action: Action, namespace: M.Namespace, params: M.Parameters, want: Refusal | None
) -> None:
    assert authorizer().check(action, namespace, params) == want


def test_default_deny_refuses_unruled_namespaces() -> None:
    assert authorizer(default_deny=True).check(Action.SUBSCRIBE, ns("other"), ()) == Refusal(
        AuthCode.UNAUTHORIZED, "no authorization rule for this namespace"
    )


def test_codes_match_every_request_kind() -> None:
    for enum in (E.SubscribeErrorCode, E.FetchErrorCode, E.PublishNamespaceErrorCode):
        for code in AuthCode:
            assert enum[code.name] == code


@given(st.binary(max_size=40))
def test_any_token_bytes_give_an_answer_never_an_exception(value: bytes) -> None:
    got = authorizer().check(Action.SUBSCRIBE, ns("live"), ((M.VersionParameter.AUTHORIZATION_TOKEN, value),))
    assert got is None or got.code in set(AuthCode)
    assert got is not None or value in (VIEW,) or M.decode_auth_token(value).token_value == VIEW


def test_relay_refuses_with_the_right_code_and_never_logs_the_token(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    relay = Relay(auth=authorizer())
    pub, _ = net.pair("pub", server_handler=relay.handle)
    bad = pub.session.publish_namespace(ns("live", "cam"), (token_parameter(b"wrong"),))
    net.pump()
    assert [(m.request_id, m.error_code) for m in pub.messages(M.PublishNamespaceError)] == [
        (bad, E.PublishNamespaceErrorCode.UNAUTHORIZED)
    ]
    pub.session.publish_namespace(ns("live", "cam"), (token_parameter(SECRET),))
    net.pump()
    assert len(pub.messages(M.PublishNamespaceOk)) == 1
    sub, _ = net.pair("sub", server_handler=relay.handle)
    r1 = sub.session.subscribe(ns("live", "cam"), b"v")
    r2 = sub.session.subscribe(ns("live", "cam"), b"v", parameters=(token_parameter(b"old"),))
    r3 = sub.session.fetch(
        standalone=M.StandaloneFetch(ns("live", "cam"), b"v", M.Location(0, 0), M.Location(1, 0)),
        parameters=(token_parameter(b"nope"),),
    )
    r4 = sub.session.subscribe(ns("live", "cam"), b"v", parameters=(token_parameter(VIEW, raw=True),))
    net.pump()
    assert [(m.request_id, m.error_code) for m in sub.messages(M.SubscribeError)] == [
        (r1, E.SubscribeErrorCode.UNAUTHORIZED), (r2, E.SubscribeErrorCode.EXPIRED_AUTH_TOKEN),
    ]  # fmt: skip
    assert [(m.request_id, m.error_code) for m in sub.messages(M.FetchError)] == [
        (r3, E.FetchErrorCode.UNAUTHORIZED)
    ]
    assert [m.request_id for m in pub.messages(M.Subscribe)] != [] and r4 not in {
        m.request_id for m in sub.messages(M.SubscribeError)
    }
    assert sub.closed() is None and pub.closed() is None
    for secret in (SECRET, VIEW, b"wrong", b"nope"):
        assert secret.decode() not in caplog.text


def test_limits_refuse_only_the_request_that_crosses_them(net: Net) -> None:
    relay = Relay(limits=Limits(max_sessions=3, max_subscriptions_per_session=2, max_track_name_bytes=20))
    pub, _ = net.pair("pub", server_handler=relay.handle)
    pub.session.publish_namespace(ns("live"))
    sub, _ = net.pair("sub", server_handler=relay.handle)
    net.pump()
    rids = [sub.session.subscribe(ns("live"), name) for name in (b"a", b"b", b"c", b"x" * 30)]
    net.pump()
    for up in pub.messages(M.Subscribe):
        pub.session.subscribe_ok(up.request_id, up.request_id + 10)
    net.pump()
    assert [m.request_id for m in sub.messages(M.SubscribeOk)] == rids[:2]
    assert [(m.request_id, m.error_code) for m in sub.messages(M.SubscribeError)] == [
        (rids[2], E.SubscribeErrorCode.INTERNAL_ERROR), (rids[3], E.SubscribeErrorCode.NOT_SUPPORTED),
    ]  # fmt: skip
    third, _ = net.pair("third", server_handler=relay.handle)
    fourth, _ = net.pair("fourth", server_handler=relay.handle)
    net.pump()
    assert third.closed() is None
    closed = fourth.closed()
    assert closed is not None and closed.error_code == E.SessionErrorCode.INTERNAL_ERROR
    assert sub.closed() is None and pub.closed() is None  # everyone else keeps being served


def test_tools_take_a_token_and_put_it_on_every_request() -> None:
    import argparse

    from relay.auth import use_token
    from relay.tools import pub, sub

    for tool in (sub, pub):
        parser = argparse.ArgumentParser()
        tool.configure(parser)
        argv = ["--url", "moqt://127.0.0.1:4443", "--insecure", "--namespace", "live", "--token", "tkn"]
        args = parser.parse_args(argv)
        assert tool.config_from_args(args).token == b"tkn"

    class Client:
        request_parameters: M.Parameters = ()

    c = Client()
    use_token(c, b"tkn")
    assert c.request_parameters == (token_parameter(b"tkn"),)
    use_token(object(), b"tkn")  # a client without the hook (in-memory fakes) is left alone


def test_namespace_size_limit_refuses_publish_namespace_only(net: Net) -> None:
    relay = Relay(limits=Limits(max_namespace_bytes=8))
    pub, _ = net.pair("pub", server_handler=relay.handle)
    big = pub.session.publish_namespace(ns("a-very-long-field"))
    small = pub.session.publish_namespace(ns("live"))
    net.pump()
    assert [(m.request_id, m.error_code) for m in pub.messages(M.PublishNamespaceError)] == [
        (big, E.PublishNamespaceErrorCode.NOT_SUPPORTED)
    ]
    assert [m.request_id for m in pub.messages(M.PublishNamespaceOk)] == [small]
