"""The relay's configuration file (TOML, `relay --config FILE`): cache sizes, limits, tokens per namespace prefix.

A bad file is refused at start, naming the file, the line (tomllib gives it for syntax errors; for a bad value we
find the key's line) and the reason, so an operator never runs with a half-understood file. Unknown keys are errors
too: a misspelt limit silently ignored is worse than a refusal. The format is documented in docs/operations-config.md.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from relay.auth import Action, Authorizer, Rule, Token
from relay.cache import CacheLimits
from relay.limits import Limits
from relay.moqt import messages as M

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


class ConfigError(ValueError):
    """A configuration file the relay refuses; str() is the whole message for the operator."""


REGISTRATION_RING_DEFAULT = 1 << 20  # REG_EVENTS_BYTES in bpf/src/maps.h


@dataclass(frozen=True)
class FastPathConfig:
    """Load-time sizes of the kernel fast path (docs/operations-config.md, [fastpath])."""

    # reg_events ring in bytes (~14.5k records per MiB): a copy the program cannot record is not sent (EG_RING_FULL)
    registration_ring: int = REGISTRATION_RING_DEFAULT


@dataclass(frozen=True)
class RelayConfig:
    cache: CacheLimits = field(default_factory=CacheLimits)
    limits: Limits = field(default_factory=Limits)
    rules: tuple[Rule, ...] = ()
    default_deny: bool = False
    fastpath: FastPathConfig = field(default_factory=FastPathConfig)

    def authorizer(self) -> Authorizer:
        return Authorizer(self.rules, default_deny=self.default_deny)


class _Reader:
    """Walks the parsed document, turning every problem into a ConfigError with a line number."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def fail(self, where: str, key: str, reason: str) -> ConfigError:
        line = self._line_of(where, key)
        at = f"{self.path}:{line}" if line else self.path
        name = f"[{where}] {key}" if where else key
        return ConfigError(f"{at}: {name}: {reason}")

    def _line_of(self, section: str, key: str) -> int | None:
        """Best effort: the line of `key = ...` after the section header (tomllib keeps no positions)."""
        current = ""
        for i, raw in enumerate(self.lines, 1):
            s = raw.strip()
            if s.startswith("["):
                current = s.strip("[] ")
                if key == "" and current == section:
                    return i
                continue
            if current == section and re.match(rf"^\"?{re.escape(key)}\"?\s*=", s):
                return i
        return None

    def table(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise self.fail("", name, "must be a table")
        return value

    def check_keys(self, table: dict[str, Any], section: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(section, key, f"unknown key (known: {', '.join(sorted(allowed))})")

    def count(self, table: dict[str, Any], section: str, key: str, default: int, minimum: int = 0) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(section, key, f"must be an integer >= {minimum}")
        return value

    def size(self, table: dict[str, Any], section: str, key: str, default: int) -> int:
        value = table.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        m = _SIZE.match(value) if isinstance(value, str) else None
        if m is None:
            raise self.fail(section, key, 'must be a byte count, e.g. 8388608 or "8 MiB"')
        return int(m.group(1)) * _UNITS[m.group(2)]


def parse_namespace(value: object) -> M.Namespace | None:
    """A namespace prefix: a list of fields (["live", "cam1"]) or one string split at "/" ("live/cam1")."""
    if isinstance(value, str):
        parts = [p for p in value.split("/") if p]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        return None
    if len(parts) > 32:
        return None
    return tuple(p.encode() for p in parts)


def _tokens(r: _Reader, section: str, key: str, value: object) -> tuple[Token, ...]:
    if not isinstance(value, list):
        raise r.fail(section, key, "must be a list of tokens")
    out = []
    for item in value:
        if isinstance(item, str) and item:
            out.append(Token(item.encode()))
        elif (
            isinstance(item, dict)
            and isinstance(item.get("value"), str)
            and set(item) <= {"value", "expires"}
        ):
            expires = item.get("expires")
            if expires is None:
                out.append(Token(item["value"].encode()))
            elif isinstance(expires, dt.datetime) and expires.tzinfo is not None:
                out.append(Token(item["value"].encode(), expires.timestamp()))
            else:
                raise r.fail(
                    section, key, "expires must be a date-time with offset, e.g. 2027-01-01T00:00:00Z"
                )
        else:
            raise r.fail(section, key, 'each token is a non-empty string or { value = "...", expires = ... }')
    return tuple(out)


def parse_config(text: str, path: str = "<config>") -> RelayConfig:
    """Parse and validate a configuration document; ConfigError says where and why."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    r = _Reader(path, text)
    r.check_keys(doc, "", {"cache", "limits", "auth", "fastpath"})

    c = r.table(doc, "cache")
    r.check_keys(c, "cache", {f.name for f in fields(CacheLimits)})
    base_cache = CacheLimits()
    cache = CacheLimits(
        max_groups=r.count(c, "cache", "max_groups", base_cache.max_groups),
        max_bytes=r.size(c, "cache", "max_bytes", base_cache.max_bytes),
        max_total_bytes=r.size(c, "cache", "max_total_bytes", base_cache.max_total_bytes),
    )

    lt = r.table(doc, "limits")
    r.check_keys(lt, "limits", {f.name for f in fields(Limits)})
    base = Limits()
    limits = Limits(
        max_sessions=r.count(lt, "limits", "max_sessions", base.max_sessions),
        max_requests_per_session=r.count(
            lt, "limits", "max_requests_per_session", base.max_requests_per_session, 1
        ),
        max_subscriptions_per_session=r.count(
            lt, "limits", "max_subscriptions_per_session", base.max_subscriptions_per_session
        ),
        max_track_name_bytes=r.count(lt, "limits", "max_track_name_bytes", base.max_track_name_bytes),
        max_namespace_bytes=r.count(lt, "limits", "max_namespace_bytes", base.max_namespace_bytes),
    )

    a = r.table(doc, "auth")
    r.check_keys(a, "auth", {"default", "rule"})
    default = a.get("default", "allow")
    if default not in ("allow", "deny"):
        raise r.fail("auth", "default", 'must be "allow" or "deny"')
    rules_raw = a.get("rule", [])
    if not isinstance(rules_raw, list):
        raise r.fail("auth", "rule", "must be an array of tables: [[auth.rule]]")
    rules: list[Rule] = []
    for item in rules_raw:
        sec = "auth.rule"
        if not isinstance(item, dict):
            raise r.fail("auth", "rule", "must be an array of tables: [[auth.rule]]")
        r.check_keys(item, sec, {"namespace", "publish", "subscribe"})
        prefix = parse_namespace(item.get("namespace"))
        if prefix is None:
            raise r.fail(sec, "namespace", 'must be a list of fields or a "a/b" string (at most 32 fields)')
        if "publish" not in item and "subscribe" not in item:
            raise r.fail(sec, "namespace", "a rule needs publish = [...] and/or subscribe = [...]")
        for action in (Action.PUBLISH, Action.SUBSCRIBE):
            if action.value in item:
                rules.append(Rule(prefix, action, _tokens(r, sec, action.value, item[action.value])))
    fp = r.table(doc, "fastpath")
    r.check_keys(fp, "fastpath", {f.name for f in fields(FastPathConfig)})
    ring = r.size(fp, "fastpath", "registration_ring", REGISTRATION_RING_DEFAULT)
    if ring < 4096 or ring & (ring - 1):  # the kernel's rule for a BPF ring buffer (page size 4 KiB)
        raise r.fail("fastpath", "registration_ring", 'must be a power of two, at least 4096, e.g. "4 MiB"')
    return RelayConfig(cache, limits, tuple(rules), default == "deny", FastPathConfig(ring))


def load_config(path: str | Path) -> RelayConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, str(path))
