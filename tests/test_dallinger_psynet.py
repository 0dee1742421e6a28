"""A real PsyNet 13 experiment deployed to the testbed with labdeploy: PsyNet from PyPI on
the testbed's Dallinger 12.4 image (generated Dockerfile), PsyNet's own preparation run
locally in throwaway containers, launch, a participant page through Caddy, and an export
that has every one of PsyNet's tables (many more than Dallinger's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from labdeploy.experiment import dallinger
from labdeploy.app import deploy
from labdeploy import export
from labdeploy.server import psql
from labdeploy.progress import Collector
from deploy_support import destroy_if_deployed, prepare_local_stack

# PsyNet deploys through the same compose paths as the Dallinger tests, which run on both
# servers; to keep the suite's time it runs on the current one (Compose v2).
pytestmark = pytest.mark.servers("trixie")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dallinger-psynet-hello"
APP = "t-dal-psynet"
DALLINGER_TABLES = {"info", "network", "node", "notification", "participant", "question", "recruitment",
                    "transformation", "transmission", "vector"}
PSYNET_TABLES = {"experiment", "response", "asset", "process", "module_state"}  # a few of PsyNet's own


def through_caddy(testbed, path: str, **kw) -> requests.Response:
    return requests.get(f"http://{testbed['http']['host']}:{testbed['http']['port']}{path}",
                        headers={"Host": f"{APP}.localhost"}, timeout=30, **kw)


def test_recognised_as_psynet_with_a_generated_dockerfile(home):
    s = dallinger.spec(EXAMPLE, home=home)
    assert s.kind == "psynet" and s.folder.psynet_version == "13.3.0"
    assert '"psynet==13.3.0"' in s.dockerfile and s.commands["web"] == "dallinger_heroku_web"


@pytest.fixture(scope="module")
def deployed(testbed, session_remote, tmp_path_factory):
    if "dallinger" not in testbed["images"]:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (builds it once).",
                    pytrace=False)
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        prepare_local_stack(session_remote, testbed)
        destroy_if_deployed(session_remote, APP)
        events = Collector()
        result = deploy.deploy(EXAMPLE, APP, session_remote, reporter=events,
                               build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                               redis_image=testbed["images"]["redis"], start_timeout=240)
        yield {"result": result, "events": events, "home": home}
        destroy_if_deployed(session_remote, APP)


def test_psynet_prepares_launches_and_serves_through_caddy(deployed, testbed, session_remote):
    lines = deployed["events"].lines()
    assert any(line.startswith("PsyNet prepared:") and ".deploy" in line for line in lines), lines[-40:]
    assert any(line.startswith('/launch: {"status": "success"') for line in lines)
    tables = set(psql.query_df(session_remote, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database="app_t_dal_psynet")["tablename"])
    assert DALLINGER_TABLES | PSYNET_TABLES <= tables
    # PsyNet's entry link hands out a participant identity and redirects to its ad page.
    first = through_caddy(testbed, "/ad?recruiter=generic&generate_tokens=1&mode=live", allow_redirects=False)
    assert first.status_code == 302 and "/ad?" in first.headers["Location"]
    ad = through_caddy(testbed, first.headers["Location"])
    assert ad.status_code == 200, ad.text[:500]


def test_export_has_every_psynet_table(deployed, session_remote):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(deployed["home"]))
        data = export.export(APP, session_remote)
    tables = set(psql.query_df(session_remote, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                               database="app_t_dal_psynet")["tablename"])
    assert set(data) == tables and len(tables) > len(DALLINGER_TABLES) + 10
    assert len(data["experiment"]) == 1  # PsyNet's launch wrote its experiment row


def test_200_participants_at_once_through_caddy_with_0_errors(deployed, session_remote, testbed):
    """The connection budget holds (issue 15.3): PsyNet through its own pooler, 200 new
    participants at once, each entering like a browser; none refused, the app within its pool."""
    from labdeploy.watch import monitor
    from labdeploy.server import pooler
    from load_support import drive, psynet_visit

    assert deployed["result"].remembered["pooler"] == {"value": True, "from": "default"}
    result = drive(testbed, session_remote, APP, psynet_visit, n=200)
    print(f"\n{EXAMPLE.name} through its pooler: {result.describe()}")
    assert result.errors == [], result.errors[:5]
    assert result.statuses[("GET /ad", 302)] == 200 and len(result.answers) == 200 * 5
    assert {status for (_, status) in result.statuses} <= {200, 302}, result.statuses
    assert result.pooled_only and result.samples >= 3
    assert 1 <= result.peak_app <= pooler.pool_size(result.role_limit) < result.role_limit
    assert result.peak_total < result.max_connections
    logs = monitor.logs(APP, session_remote, "web", tail="all")
    assert not logs["line"].str.contains("too many connections", case=False).any()
