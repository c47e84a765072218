"""The configuration file: every section parsed into the objects the relay uses, bad files refused with line + reason."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from relay.auth import Action, Token
from relay.cache import CacheLimits
from relay.config import ConfigError, RelayConfig, load_config, parse_config
from relay.limits import Limits

GOOD = """
[cache]
max_groups = 3
max_bytes = "2 MiB"
max_total_bytes = 33554432

[limits]
max_sessions = 50
max_requests_per_session = 40
max_subscriptions_per_session = 10
max_track_name_bytes = 512
max_namespace_bytes = 256

[auth]
default = "deny"

[[auth.rule]]
namespace = ["live", "cam1"]
publish = ["pub-secret"]
subscribe = ["view-1", { value = "view-old", expires = 2020-01-01T00:00:00Z }]

[[auth.rule]]
namespace = "public/"
subscribe = []
"""


def test_a_full_file_becomes_the_relay_objects() -> None:
    cfg = parse_config(GOOD)
    assert cfg.cache == CacheLimits(3, 2 << 20, 32 << 20)
    assert cfg.limits == Limits(50, 40, 10, 512, 256)
    assert cfg.default_deny
    (pub, sub, public) = cfg.rules
    assert (pub.prefix, pub.action, pub.tokens) == (
        (b"live", b"cam1"),
        Action.PUBLISH,
        (Token(b"pub-secret"),),
    )
    expired = dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()
    assert sub.tokens == (Token(b"view-1"), Token(b"view-old", expired))
    assert (public.prefix, public.action, public.tokens) == ((b"public",), Action.SUBSCRIBE, ())
    auth = cfg.authorizer()
    assert auth.default_deny and auth.rules == cfg.rules


def test_an_empty_file_gives_the_defaults() -> None:
    assert parse_config("") == RelayConfig()


BAD = [
    ("[cache]\nmax_groups = \n", "not valid TOML", "line 2"),
    ("[cache]\n\nmax_groups = -1\n", "<config>:3: [cache] max_groups: must be an integer >= 0", None),
    ("[limits]\nmax_sesions = 3\n", "<config>:2: [limits] max_sesions: unknown key", None),
    ("[limits]\nmax_requests_per_session = 0\n", "<config>:2: [limits] max_requests_per_session", None),
    ('[cache]\nmax_bytes = "lots"\n', "<config>:2: [cache] max_bytes: must be a byte count", None),
    ('[auth]\ndefault = "maybe"\n', '<config>:2: [auth] default: must be "allow" or "deny"', None),
    ("[[auth.rule]]\nnamespace = 5\npublish = []\n", "<config>:2: [auth.rule] namespace", None),
    ('[[auth.rule]]\nnamespace = "a"\npublish = [1]\n', "<config>:3: [auth.rule] publish: each token", None),
    ('[[auth.rule]]\nnamespace = "a"\n', "a rule needs publish", None),
    ("cache = 3\n", "<config>:1: cache: must be a table", None),
    ('[[auth.rule]]\nnamespace = "a"\nsubscribe = [{ value = "x", expires = 2020-01-01T00:00:00 }]\n',
     "expires must be a date-time with offset", None),
    ('[fastpath]\nregistration_ring = "3 MiB"\n', "<config>:2: [fastpath] registration_ring: must be a power of two",
     None),
    ("[fastpath]\nregistration_ring = 2048\n", "at least 4096", None),
    ("[fastpath]\nring = 4096\n", "<config>:2: [fastpath] ring: unknown key", None),
]  # fmt: skip


def test_fastpath_registration_ring_size() -> None:
    assert parse_config('[fastpath]\nregistration_ring = "4 MiB"\n').fastpath.registration_ring == 4 << 20
    assert parse_config("").fastpath.registration_ring == 1 << 20  # the object's own size (maps.h)


@pytest.mark.parametrize(("text", "want", "also"), BAD)
def test_bad_files_are_refused_with_line_and_reason(text: str, want: str, also: str | None) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert want in str(exc.value)
    if also is not None:
        assert also in str(exc.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "ok.toml").write_text(GOOD)
    assert load_config(tmp_path / "ok.toml") == parse_config(GOOD)


def test_relay_refuses_to_start_with_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "relay.toml"
    bad.write_text('[limits]\nmax_sessions = "many"\n')
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", "--hal", "none", "--listen", "127.0.0.1:0", "--config", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"{bad}:2: [limits] max_sessions: must be an integer >= 0" in out.stderr
    assert "listening" not in out.stdout
