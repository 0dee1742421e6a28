"""The maintenance block as text: whatever a researcher types, it stays one quoted Caddy token
and one matcher line; paths outside the plain set are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from labdeploy.errors import ValidationError
from labdeploy.server import caddy, maintenance
from labdeploy.server.stack import StackSettings

SITE = caddy.site_block("demo", StackSettings(domain="localhost"))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(min_size=1, max_size=300))
def test_any_message_is_one_quoted_token_without_placeholders(message):
    try:
        m = maintenance.check(["/"], message, 60)
    except ValidationError:
        return  # empty after stripping, or a control character: refused with a hint
    lines = maintenance.block(m, dallinger=False).splitlines()
    assert len(lines) == 7 and lines[0] == maintenance.BEGIN and lines[-1] == maintenance.END
    respond = lines[5]
    assert respond.startswith("\trespond @labdeploy_arrivals \"") and respond.endswith("\" 503")
    body = respond[len("\trespond @labdeploy_arrivals \""):-len("\" 503")]
    assert not any(c in body for c in '"\\{}\n\r')


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_a_path_is_refused_or_plain(paths):
    try:
        m = maintenance.check(paths, None, 60)
    except ValidationError as exc:
        assert exc.hint
        return
    for p in m.paths:
        assert p.startswith("/") and not any(c in p for c in ' \t\n"\'{}#;\\')


def test_the_block_goes_in_after_the_opening_line_and_comes_out_whole():
    on = maintenance.with_block(SITE, maintenance.block(maintenance.check(None, None, 60), dallinger=True))
    assert maintenance.is_on(on) and "path_regexp" in on
    assert caddy.site_upstream(on) == caddy.site_upstream(SITE)  # the web switch still finds its line
    assert maintenance.without(on) == SITE
    again = maintenance.with_block(on, maintenance.block(maintenance.check(["/x*"], "Later", 30), dallinger=False))
    assert again.count(maintenance.BEGIN) == 1 and "path /x*" in again and "Retry-After 30" in again
    assert maintenance.carry(again, SITE) == again and maintenance.carry(SITE, SITE) == SITE


def test_an_app_that_is_not_dallinger_without_paths_is_refused_with_a_remedy():
    with pytest.raises(ValidationError) as info:
        maintenance.block(maintenance.check(None, None, 60), dallinger=False)
    assert info.value.remedy is not None and info.value.remedy.key == "maintenance.paths"
