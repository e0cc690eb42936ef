"""A secret in the URL path (Telegram's Bot API: /bot<token>/<method>): the segment the
agent sent is replaced, and the secret never comes back to the agent in a response, even
split across chunks. End to end through the real proxy with the real Hermes:
tests/test_hermes_real.py (test_the_bot_api_saw_the_real_token..., test_an_upstream_that_echoes...)."""
from __future__ import annotations

import pytest

from agentctl_proxy import config as c
from agentctl_proxy.secrets import SecretUnavailable, Unreflected, inject_path

TOKEN = "123456:real-Token_x"


@pytest.mark.parametrize("path, want", [
    ("/bot1:stand-in/getUpdates", (f"/bot{TOKEN}/getUpdates", "1:stand-in")),
    ("/bot1:stand-in/sendMessage?chat_id=1", (f"/bot{TOKEN}/sendMessage?chat_id=1", "1:stand-in")),
    ("/bot1:stand-in", (f"/bot{TOKEN}", "1:stand-in")),
    ("/bot/getMe", None),  # no segment to replace: nothing is sent
    ("/file/bot1:x/a.jpg", None),
])
def test_the_segment_after_the_prefix_is_replaced(path, want):
    assert inject_path(path, "/bot", TOKEN) == want


def test_a_value_that_would_change_the_path_is_refused():
    with pytest.raises(SecretUnavailable, match="not a valid URL path segment") as err:
        inject_path("/bot1:x/getMe", "/bot", "abc/../../admin", "scout/telegram")
    assert "admin" not in str(err.value)


@pytest.mark.parametrize("cut", range(1, 40))
def test_the_secret_never_leaves_in_a_body_whatever_the_chunks(cut):
    body = f'{{"description": "moved: /bot{TOKEN}/x", "again": "{TOKEN}"}}'.encode()
    seen = []
    u = Unreflected(TOKEN, "1:stand-in", then=lambda d: seen.append(d) or d)
    parts = [p for i in range(0, len(body), cut) for p in u(body[i:i + cut])] + u(b"")
    assert all(parts)  # an empty chunk would end a chunked body early
    out = b"".join(parts)
    assert out == body.replace(TOKEN.encode(), b"1:stand-in")
    assert b"".join(seen) == out  # the body cap saw every byte that left


def test_headers_are_rewritten():
    assert Unreflected(TOKEN, "S").header(f"https://api.telegram.org/bot{TOKEN}/x") == "https://api.telegram.org/botS/x"


@pytest.mark.parametrize("inject, ok", [
    ({"path_prefix": "/bot"}, True),
    ({"path_prefix": "/bot", "header": "x-api-key"}, False),
    ({"path_prefix": "bot"}, False),
    ({"path_prefix": "/bot*/*"}, False),
])
def test_config_takes_one_target(inject, ok):
    if ok:
        c.Inject(**inject)
    else:
        with pytest.raises(ValueError):
            c.Inject(**inject)
