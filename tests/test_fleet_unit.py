"""The fleet's pure parts: room by the 5 GB rule, the choice of a server and its one-line reason,
and how one server's failure becomes a row (with stand-in connections: the real ones are in
tests/test_fleet.py)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from labdeploy.app import fleet
from labdeploy.errors import HostUnreachable
from labdeploy.ssh import pool, servers

GB = fleet.GB


def test_room_follows_the_5_gb_rule_less_the_apps_running_and_the_memory_free():
    assert fleet.room(16 * GB, 15 * GB, 100 * GB, 0) == 3  # the seed's "a 16 GB server holds about three"
    assert fleet.room(16 * GB, 15 * GB, 100 * GB, 2) == 1  # two running keep their share
    assert fleet.room(16 * GB, 4 * GB, 100 * GB, 0) == 0  # whatever the rule says, 4 GB free is not 5
    assert fleet.room(64 * GB, 60 * GB, 5 * GB, 0) == 0  # a full disk holds no new image
    assert fleet.room(16 * GB, 15 * GB, 100 * GB, 5) == 0  # never below zero


def test_usage_row_reads_meminfo_df_and_the_apps_table():
    facts = {"meminfo": ["MemTotal:       16777216 kB", "MemAvailable:   12582912 kB"],
             "disk": ["/dev/vda 100000000 20000000 52428800 30% /home"]}
    listing = pd.DataFrame({"app": ["a", "b", "c"], "state": ["running", "stopped", "degraded"]})
    row = fleet.usage_row(facts, listing)
    assert row == {"memory_total_gb": 16.0, "memory_free_gb": 12.0, "disk_free_gb": 50.0, "apps": 3,
                   "apps_running": 2, "room": 1}


def _table(*rows) -> pd.DataFrame:
    cols = ["server", "answered", "error", "memory_total_gb", "memory_free_gb", "disk_free_gb", "apps_running", "room"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def test_choose_takes_the_most_room_and_says_why_in_one_line():
    table = _table(("small", True, "", 16, 14, 50, 1, 2), ("big", True, "", 64, 60, 200, 3, 9),
                   ("gone", False, "refused", None, None, None, None, None))
    chosen = fleet.choose(table)
    assert chosen.server == "big"
    assert "\n" not in chosen.reason
    assert chosen.reason.startswith("big: room for 9 more experiments (60 GB memory free of 64, 200 GB disk free, "
                                    "3 apps running")
    assert "others: small 2" in chosen.reason and "not answering: gone" in chosen.reason


def test_a_tie_goes_to_more_free_memory_then_fewer_apps_then_the_name():
    assert fleet.choose(_table(("a", True, "", 16, 10, 50, 0, 2), ("b", True, "", 16, 11, 50, 0, 2))).server == "b"
    assert fleet.choose(_table(("a", True, "", 32, 11, 50, 1, 2), ("b", True, "", 16, 11, 50, 0, 2))).server == "b"
    assert fleet.choose(_table(("b", True, "", 16, 11, 50, 0, 2), ("a", True, "", 16, 11, 50, 0, 2))).server == "a"


def test_no_room_anywhere_is_an_error_that_names_the_silent_servers():
    with pytest.raises(fleet.NoRoom) as info:
        fleet.choose(_table(("full", True, "", 16, 3, 50, 3, 0), ("gone", False, "refused", None, None, None, None, None)))
    assert "not answering: gone" in info.value.message and info.value.hint


class _StandIn:
    """A Remote's stand-in: connects (or fails like an unreachable server), answers at once."""

    def __init__(self, spec, together: threading.Barrier = None) -> None:
        self.spec, self.host, self.together = spec, spec.host, together
        self.threads: list = []

    def connect(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.together:  # every server is being connected to at the same moment, or this times out
            self.together.wait()
        if self.spec.host == "192.0.2.9":
            raise HostUnreachable("192.0.2.9 did not answer on port 22.")

    def run(self, *a, **k):  # pragma: no cover - never called: the asks below need no server
        raise AssertionError

    def close(self) -> None:
        pass


def test_a_server_that_fails_is_one_row_saying_so_and_the_others_answer(home, no_network):
    servers.add("one", "192.0.2.1", "alice")
    servers.add("down", "192.0.2.9", "alice")
    servers.add("two", "192.0.2.2", "alice")
    opened, together = {}, threading.Barrier(3, timeout=30)

    def opener(spec):
        opened[spec.name] = _StandIn(spec, together)
        return opened[spec.name]

    with pool.Pool(opener) as p, pool.using(p):
        df = fleet.gather(lambda remote: pd.DataFrame({"app": [f"{remote.spec.name}-x", f"{remote.spec.name}-y"]}))
    assert list(df["server"]) == ["down", "one", "one", "two", "two"]
    assert list(df["answered"]) == [False, True, True, True, True]
    assert df.loc[0, "error"] == "192.0.2.9 did not answer on port 22." and pd.isna(df.loc[0, "app"])
    assert df.attrs["not_answering"] == ["down"] and sorted(df.attrs["seconds"]) == ["down", "one", "two"]
    # each server on its own connection, all connecting at once (the barrier let all three through)
    assert {name: len(r.threads) for name, r in opened.items()} == {"one": 1, "down": 1, "two": 1}
    assert len({r.threads[0] for r in opened.values()}) == 3 and not together.broken


def test_an_ask_that_raises_is_a_row_too_and_an_empty_answer_leaves_no_row(home, no_network):
    servers.add("one", "192.0.2.1", "alice")
    servers.add("two", "192.0.2.2", "alice")

    def ask(remote):
        if remote.spec.name == "one":
            raise RuntimeError("docker: permission denied")
        return pd.DataFrame(columns=["app"])

    with pool.Pool(_StandIn) as p, pool.using(p):
        df = fleet.gather(ask)
    assert list(df["server"]) == ["one"] and df.loc[0, "error"] == "docker: permission denied"
    assert df.attrs["servers"] == ["one", "two"] and df.attrs["not_answering"] == ["one"]


def test_no_server_registered_and_an_unknown_name_are_refused_before_any_connection(home, no_network):
    with pytest.raises(fleet.NoServers):
        fleet.apps()
    servers.add("one", "192.0.2.1", "alice")
    with pytest.raises(servers.ServerNotFound):
        fleet.status(["one", "nope"])


def test_auto_is_ambiguous_when_a_server_is_registered_under_that_name(home, no_network):
    fleet.check_server_argument("auto")  # nothing registered: fine
    servers.add("auto", "192.0.2.1", "alice")
    with pytest.raises(fleet.ValidationError):
        fleet.check_server_argument("auto")


# ---------------------------------------------------------------------------- move, without a server

from labdeploy.app import move  # noqa: E402
from labdeploy.server import caddy, stack  # noqa: E402

LOCAL = stack.StackSettings(domain="localhost")


def test_a_moved_app_on_the_same_address_is_forwarded_to_the_new_server_host_kept():
    site = caddy.site_block("flt-x", LOCAL)
    url = caddy.app_url("flt-x", LOCAL)
    text, says = move.moved_site(site, "trixie", url, url, "10.250.1.2", LOCAL)
    assert text.startswith("# labdeploy: moved to trixie\n")
    assert "\treverse_proxy http://10.250.1.2:80\n" in text and "flt-x_web" not in text.split("{", 1)[1]
    assert "http://flt-x.localhost {" in text and "forwards to trixie (10.250.1.2)" in says


def test_a_moved_app_with_a_new_address_is_redirected_there_for_good():
    old = stack.StackSettings(domain="a.example.org", email="x@example.org")
    site = caddy.site_block("flt-x", old)
    text, says = move.moved_site(site, "lab2", "https://flt-x.b.example.org/", caddy.app_url("flt-x", old),
                                 "203.0.113.2", None)
    assert "\tredir https://flt-x.b.example.org{uri} 308\n" in text and "reverse_proxy" not in text
    assert "\ttls x@example.org" in text and says == "redirects to https://flt-x.b.example.org/"


def test_a_moved_https_app_on_the_same_name_is_forwarded_with_the_app_name_for_tls():
    settings = stack.StackSettings(domain="a.example.org")
    site = caddy.site_block("flt-x", settings)
    url = caddy.app_url("flt-x", settings)
    text, _ = move.moved_site(site, "lab2", url, url, "203.0.113.2", settings)
    assert "\treverse_proxy https://203.0.113.2:443 {\n\t\ttransport http {\n\t\t\ttls_server_name flt-x.a.example.org\n" in text


def test_a_hostile_server_name_never_reaches_the_site_file():
    site = caddy.site_block("flt-x", LOCAL)
    url = caddy.app_url("flt-x", LOCAL)
    with pytest.raises(fleet.ValidationError):
        move.moved_site(site, "x}\n:80 {\n\trespond hi", url, url, "10.250.1.2", LOCAL)


def test_move_refuses_bad_requests_before_connecting(home, no_network):
    with pytest.raises(fleet.ValidationError):
        move.move("flt-x", "lab", "lab", "examples/stroop")
    with pytest.raises(fleet.ValidationError):
        move.move("flt-x", "lab1", "lab2", "examples/stroop", archive="x.zip")
    with pytest.raises(fleet.ValidationError):
        move.move("Bad Name", "lab1", "lab2", "examples/stroop")
    with pytest.raises(fleet.ValidationError):
        move.move("flt-x", "lab1", "lab2", "/nonexistent/folder")
