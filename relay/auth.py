"""Authorization: AUTHORIZATION TOKEN parameters checked per namespace prefix, for publishing and for subscribing.

Draft-14 section 9.2.1.1: a request carries the token in Version Parameter 0x03 as a Token structure (Alias Type,
[Token Alias], [Token Type, Token Value]). Some deployed peers (aiomoqt 0.5.3) put the raw token bytes there
instead, so a value that matches a configured token as-is is accepted as well. We advertise no token cache
(MAX_AUTH_TOKEN_CACHE_SIZE absent = 0), so REGISTER is checked like USE_VALUE but not remembered, and USE_ALIAS /
DELETE can never name a known alias (refused as MALFORMED_AUTH_TOKEN).

Refusal codes are the same numbers in SUBSCRIBE_ERROR, FETCH_ERROR and PUBLISH_NAMESPACE_ERROR (sections 9.9, 9.18,
9.25): UNAUTHORIZED 0x1, MALFORMED_AUTH_TOKEN 0x10, EXPIRED_AUTH_TOKEN 0x12. Tokens are compared with
hmac.compare_digest and never logged or put in a reason phrase.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from relay.moqt import messages as M
from relay.moqt.errors import KeyValueFormattingError


class Action(Enum):
    PUBLISH = "publish"  # PUBLISH_NAMESPACE
    SUBSCRIBE = "subscribe"  # SUBSCRIBE, FETCH


class AuthCode(IntEnum):
    """Request error codes shared by SUBSCRIBE_ERROR / FETCH_ERROR / PUBLISH_NAMESPACE_ERROR (draft-14 9.9, 9.18, 9.25)."""

    UNAUTHORIZED = 0x1
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


@dataclass(frozen=True)
class Token:
    """One accepted secret; `expires` is a Unix time (None = never)."""

    value: bytes = field(repr=False)
    expires: float | None = None


@dataclass(frozen=True)
class Rule:
    """Who may do `action` under `prefix` (whole tuple fields, as routing matches them)."""

    prefix: M.Namespace
    action: Action
    tokens: tuple[Token, ...]


@dataclass(frozen=True)
class Refusal:
    code: AuthCode
    reason: str


def _is_prefix(prefix: M.Namespace, ns: M.Namespace) -> bool:
    return len(prefix) <= len(ns) and ns[: len(prefix)] == prefix


class Authorizer:
    """Longest matching prefix rule decides; without any matching rule the request is allowed (open relay) unless
    `default_deny` is set."""

    def __init__(
        self,
        rules: tuple[Rule, ...] = (),
        *,
        default_deny: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.default_deny = default_deny
        self.clock = clock
        self.refused = 0

    def check(self, action: Action, namespace: M.Namespace, parameters: M.Parameters) -> Refusal | None:
        """None = allowed; else the refusal to send (the reason never contains the token)."""
        rule = self._rule(action, namespace)
        if rule is None:
            if self.default_deny:
                return self._refuse(AuthCode.UNAUTHORIZED, "no authorization rule for this namespace")
            return None
        values = [
            v for t, v in parameters if t == M.VersionParameter.AUTHORIZATION_TOKEN and isinstance(v, bytes)
        ]
        if not values:
            return self._refuse(AuthCode.UNAUTHORIZED, "authorization token required")
        malformed = False
        expired = False
        for raw in values:
            candidates = [raw]
            try:
                tok = M.decode_auth_token(raw)
                if tok.alias_type in (M.AuthTokenAliasType.USE_VALUE, M.AuthTokenAliasType.REGISTER):
                    assert tok.token_value is not None
                    candidates.insert(0, tok.token_value)
                elif tok.alias_type in (M.AuthTokenAliasType.USE_ALIAS, M.AuthTokenAliasType.DELETE):
                    malformed = True  # no alias can be known: we advertise no token cache
            except KeyValueFormattingError:
                malformed = True
            for cand in candidates:
                for accepted in rule.tokens:
                    if hmac.compare_digest(cand, accepted.value):
                        if accepted.expires is not None and self.clock() >= accepted.expires:
                            expired = True
                        else:
                            return None
        if expired:
            return self._refuse(AuthCode.EXPIRED_AUTH_TOKEN, "authorization token expired")
        if malformed:
            return self._refuse(AuthCode.MALFORMED_AUTH_TOKEN, "malformed authorization token")
        return self._refuse(AuthCode.UNAUTHORIZED, "authorization token not accepted")

    def _rule(self, action: Action, namespace: M.Namespace) -> Rule | None:
        best: Rule | None = None
        for rule in self.rules:
            if (rule.action is action and _is_prefix(rule.prefix, namespace)
                    and (best is None or len(rule.prefix) > len(best.prefix))):  # fmt: skip
                best = rule
        return best

    def _refuse(self, code: AuthCode, reason: str) -> Refusal:
        self.refused += 1
        return Refusal(code, reason)


def token_parameter(value: bytes, *, raw: bool = False) -> tuple[int, bytes]:
    """The AUTHORIZATION TOKEN parameter for a request: a USE_VALUE Token structure (or the raw bytes, as aiomoqt)."""
    if raw:
        return (M.VersionParameter.AUTHORIZATION_TOKEN, value)
    tok = M.AuthToken(M.AuthTokenAliasType.USE_VALUE, None, 0, value)
    return (M.VersionParameter.AUTHORIZATION_TOKEN, M.encode_auth_token(tok))


def use_token(client: object, token: bytes | None) -> None:
    """`relay pub|sub --token`: put the token on every request a tool client sends (clients without the
    `request_parameters` hook, e.g. in-memory fakes, are left alone)."""
    if token is not None and hasattr(client, "request_parameters"):
        setattr(client, "request_parameters", (token_parameter(token),))  # noqa: B010
