"""A PsyNet 13.3 static experiment written the way PsyNet's own demos are
(examples/psynet-static: a StaticTrialMaker with repeat trials and end-of-experiment
feedback), deployed to the testbed as its folder stands, on the testbed's Dallinger 12.4 image.

One participant is driven through every page over plain HTTP through Caddy, as a browser
does it (tests/psynet_browser.py); the export must hold that participant, the trials with
their answers (the repeats included) and the responses. Then the destroy sequence for an app
that writes by itself: PsyNet records an experiment_status row every minute, so a plain
destroy after an older export is refused while the app keeps serving; the experiment id
across an update; and destroy with a final export stops, exports, then deletes.

The tests run in file order and share one deploy (module scope).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from labdeploy.app import apps, deploy
from labdeploy.experiment import dallinger
from labdeploy import export
from labdeploy.server import layout, psql
from labdeploy.data.archive import load_export
from labdeploy.progress import Collector, StepStarted
from deploy_support import destroy_if_deployed, prepare_local_stack
from psynet_browser import Browser, Page, wait_for

# PsyNet deploys through the same compose paths as the Dallinger tests, which run on both
# servers; to keep the suite's time it runs on the current one (Compose v2).
pytestmark = pytest.mark.servers("trixie")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "psynet-static"
APP = "t-psy-static"
DB = "app_t_psy_static"
WORDS = {"bouba": "round", "maluma": "round", "kiki": "spiky", "takete": "spiky"}  # the experiment's nodes
OTHER = {"round": "spiky", "spiky": "round"}


def web_container_env(remote, name: str) -> str:
    """An environment variable of the app's running web container (found by its labels)."""
    script = (f"c=$(docker ps -q --filter label=labdeploy.app={APP} --filter label=labdeploy.service=web "
              f"--filter status=running | head -n 1); docker exec \"$c\" printenv {name}")
    return remote.run(["sh", "-c", script]).stdout.strip()


def container_states(remote) -> dict:
    """service -> state of every container of the app (by its labels)."""
    fmt = '{{.Label "labdeploy.service"}} {{.State}}'
    out = remote.run(["docker", "ps", "-a", "--filter", f"label=labdeploy.app={APP}", "--format", fmt]).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def value(stored):
    """PsyNet stores Python objects (answers, definitions) as JSON text."""
    return json.loads(stored) if isinstance(stored, str) else stored


def shape_trials(info):
    """The experiment's trials in the info table (PsyNet types rows by the class's import path)."""
    return info[info["type"].str.rsplit(".", n=1).str[-1] == "ShapeTrial"]


def folder_state() -> dict:
    """Every file of the example folder and its content: a deploy must leave it as it was."""
    return {p.relative_to(EXAMPLE).as_posix(): p.read_bytes() for p in sorted(EXAMPLE.rglob("*")) if p.is_file()}


def status_rows(remote) -> int:
    return int(psql.query_df(remote, "SELECT count(*) AS n FROM experiment_status", database=DB)["n"][0])


@pytest.fixture(scope="module")
def deployed(testbed, session_remote, tmp_path_factory):
    if "dallinger" not in testbed["images"]:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (builds it once).",
                    pytrace=False)
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        # Export records (~/.local/share/labdeploy) and ~/.dallingerconfig stay in this module's HOME.
        mp.setenv("HOME", str(home))
        for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "SSH_AUTH_SOCK"):
            mp.delenv(var, raising=False)
        prepare_local_stack(session_remote, testbed)
        destroy_if_deployed(session_remote, APP)
        events = Collector()
        before = folder_state()
        t0 = time.monotonic()
        result = deploy.deploy(EXAMPLE, APP, session_remote, reporter=events,
                               build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                               redis_image=testbed["images"]["redis"], start_timeout=240)
        print(f"\ndeploy of {APP}: {time.monotonic() - t0:.0f} s")
        http = testbed["http"]
        yield {"result": result, "events": events, "home": home, "exports": home / "exports",
               "folder_unchanged": folder_state() == before,
               "browser": lambda: Browser(f"http://{http['host']}:{http['port']}", f"{APP}.localhost")}
        destroy_if_deployed(session_remote, APP)


def test_the_folder_as_shipped_gets_labdeploys_dockerfile_and_sanitised_constraints(home):
    s = dallinger.spec(EXAMPLE, home=home)
    assert s.kind == "psynet" and s.folder.psynet_version == "13.3.0"
    assert s.commands["worker"] == "dallinger_heroku_worker" and "clock" in s.services  # PsyNet's scheduler
    # PsyNet 13.3's stock Dockerfile (python:3.13-bookworm, uv, the Heroku CLI) can't build
    # here; it is recognised and labdeploy's generated one is built instead.
    assert s.dockerfile is not None and any("PsyNet's stock template" in n.text for n in s.notes), s.notes
    assert (s.release.dallinger, s.release.psynet) == ("12.4.0", "13.3.0")
    # The generated constraints keep the versions but drop what pip refuses in a constraints
    # file: the extras (dallinger[docker]) and the `psynet @ git+...` line.
    (constraints,) = s.build_files.values()
    pins = [line for line in constraints.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "dallinger==12.4.0" in pins and "psynet==13.3.0" in pins and "rq==2.12.0" in pins
    assert not [line for line in pins if "[" in line or "@" in line or "git+" in line]


def test_deploy_launches_psynet_and_proves_its_worker(deployed):
    assert deployed["folder_unchanged"]  # deployed as it stands: nothing written into the folder
    lines = deployed["events"].lines()
    assert any("PsyNet's stock template" in line for line in lines), lines[:40]
    assert any(line.startswith('/launch: {"status": "success"') for line in lines), lines[-40:]
    assert "the worker ran a test job" in lines
    assert deployed["result"].experiment_id


def test_one_participant_takes_every_page_over_http(deployed):
    browser = deployed["browser"]()
    browser.enter()
    first_answers: dict = {}
    repeats: list = []

    def answer(page: Page) -> str:
        text = page.text()
        if "Finish" in page.buttons:
            return "Finish"
        word = next(w for w in WORDS if f" {w} " in f" {text} ")
        if "Repeated word" in text:
            # The first repeat gets the first answer again, the second the other one: 50 % consistent.
            raw = first_answers[word] if not repeats else OTHER[first_answers[word]]
            repeats.append((word, raw))
            return raw
        assert word not in first_answers, f"{word} shown twice outside the repeats"
        first_answers[word] = WORDS[word]
        return WORDS[word]

    visit = browser.take_experiment(answer)
    kinds = [kind for kind, _, _ in visit.pages]
    texts = [text for _, text, _ in visit.pages]
    # Consent, instructions, 4 words, 2 repeats, the end feedback, PsyNet's end page, the submit page.
    assert kinds == ["consent", "next"] + ["buttons"] * 6 + ["next", "buttons", "submit"], list(zip(kinds, texts))
    assert "round or spiky" in texts[1]
    assert set(first_answers) == set(WORDS) and len(repeats) == 2
    assert all("Repeated word" in t for t in texts[6:8]) and not any("Repeated word" in t for t in texts[2:6])
    assert "same answer to the repeated words 50%" in texts[8], texts[8]
    assert "end of the experiment" in texts[9] and visit.pages[9][2] == "Finish"
    routes = {(method, path) for method, path, _ in visit.requests}
    assert {("GET", "/ad"), ("GET", "/consent"), ("GET", "/start"), ("POST", "/participant"), ("GET", "/timeline"),
            ("POST", "/response"), ("POST", "/worker_complete"), ("GET", "/recruiter-exit")} <= routes, routes
    # The front end's own files came with the image (PsyNet's, through its preparation, and Dallinger's).
    for path in ("/static/scripts/psynet.js", "/static/scripts/dallinger2.js"):
        browser.request("GET", path)
    deployed.update(visit=visit, first_answers=first_answers, repeats=repeats)


def test_the_export_has_the_participant_the_trials_and_the_responses(deployed, session_remote):
    data = export.export(APP, session_remote, save_to=deployed["exports"])
    deployed["early_export"] = data
    visit = deployed["visit"]
    participants = data["participant"]
    assert len(participants) == 1
    p = participants.iloc[0]
    assert int(p["id"]) == visit.participant_id and p["unique_id"] == visit.unique_id
    assert bool(p["complete"]) and p["status"] in ("approved", "submitted") and p["end_time"] is not None

    info = data["info"]
    trials = shape_trials(info)
    assert len(trials) == 6, sorted(set(info["type"]))
    assert set(trials["trial_maker_id"]) == {"shapes"} and trials["complete"].astype(bool).all()
    assert set(trials["participant_id"]) == {visit.participant_id}
    words = trials["definition"].map(lambda d: value(d)["word"])
    firsts, repeats = trials[~trials["is_repeat_trial"].astype(bool)], trials[trials["is_repeat_trial"].astype(bool)]
    assert sorted(words[firsts.index]) == sorted(WORDS) and len(repeats) == 2
    answers = {w: value(a) for w, a in zip(words[firsts.index], firsts["answer"])}
    assert answers == deployed["first_answers"]
    for _, r in repeats.iterrows():
        # Each repeat is linked to the first showing of its word. PsyNet 13.3's parent_trial
        # relationship has no remote_side, so the id is stored on the first showing.
        linked = firsts[(firsts["parent_trial_id"] == r["id"]) | (firsts["id"] == r["parent_trial_id"])]
        assert len(linked) == 1 and value(linked.iloc[0]["definition"])["word"] == value(r["definition"])["word"]
    assert sorted(zip(words[repeats.index], repeats["answer"].map(value))) == sorted(deployed["repeats"])

    responses = data["response"]
    mine = responses[responses["participant_id"] == visit.participant_id]
    choices = mine[mine["question"] == "shape_choice"]
    assert len(choices) == 6
    assert sorted(choices["answer"].map(value)) == sorted([*deployed["first_answers"].values(),
                                                           *(a for _, a in deployed["repeats"])])
    consent = mine[mine["page_type"] == "MainConsentPage"]
    assert [value(a) for a in consent["answer"]] == [{"main_consent": True}]
    assert len(data["experiment_status"]) >= 1  # PsyNet's own rows, written by itself


def test_destroy_with_data_after_an_older_export_is_refused_and_the_app_keeps_serving(deployed, session_remote):
    exported = len(deployed["early_export"]["experiment_status"])
    # PsyNet's clock writes a status row every minute: wait for one newer than the export.
    wait_for(lambda: status_rows(session_remote) > exported, 150, "PsyNet's next experiment_status row", 3)
    with pytest.raises(export.ExportRequired) as refused:
        # force: this test is about the export check, whatever participants are still 'working'.
        apps.destroy(APP, session_remote, confirm=True, remove_data=True, force=True)
    assert "experiment_status" in refused.value.message
    # Nothing was stopped for the refusal: every container of the app still runs.
    states = container_states(session_remote)
    assert {"web", "worker", "clock", "redis"} <= set(states) and set(states.values()) == {"running"}, states
    # Still routed and serving: a new participant can enter.
    deployed["browser"]().enter()


def test_the_experiment_id_survives_an_update(deployed, testbed, session_remote):
    first = deployed["result"].experiment_id
    assert web_container_env(session_remote, "DALLINGER_UID") == first
    updated = deploy.update(EXAMPLE, APP, session_remote, build_args={"BASE_IMAGE": testbed["images"]["dallinger"]},
                            redis_image=testbed["images"]["redis"], start_timeout=240)
    assert updated.experiment_id == first and updated.data == "kept"
    assert web_container_env(session_remote, "DALLINGER_UID") == first
    # The participant is still there, and PsyNet still serves them (their exit page).
    browser = deployed["browser"]()
    browser.request("GET", f"/recruiter-exit?participant_id={deployed['visit'].participant_id}")


def test_destroy_with_a_final_export_stops_exports_then_deletes(deployed, session_remote):
    from labdeploy import backup

    backup.now(APP, session_remote)  # (the server takes one by itself within a minute anyway)
    final = deployed["home"] / "final"
    events = Collector()
    # force: the participant who entered in the refusal test above is still working.
    gone = apps.destroy(APP, session_remote, confirm=True, remove_data=True, final_export=final, reporter=events,
                        force=True)
    # The documented order: stop the app, export every table, then delete its data.
    started = [e.step for e in events.of(StepStarted)]
    assert started.index("stop") < started.index("Read the tables") < started.index("data"), started
    assert len(gone.exported) == 1 and Path(gone.exported[0]).parent == final
    saved = load_export(gone.exported[0])
    visit = deployed["visit"]
    assert visit.participant_id in set(saved["participant"]["id"])
    assert len(saved["participant"]) == 2  # the one who finished, and the one who entered after
    trials = shape_trials(saved["info"])
    assert len(trials) == 6 and set(trials["participant_id"]) == {visit.participant_id}
    assert len(saved["experiment_status"]) > len(deployed["early_export"]["experiment_status"])
    assert "database and role" in gone.removed

    # Nothing of the app is left on the server.
    assert APP not in set(apps.apps(session_remote)["app"])
    assert psql.query_df(session_remote, f"SELECT 1 FROM pg_database WHERE datname = '{DB}'").empty
    assert psql.query_df(session_remote, f"SELECT 1 FROM pg_roles WHERE rolname LIKE '{DB}%'").empty
    for what in (["docker", "ps", "-aq", "--filter", f"label=labdeploy.app={APP}"],
                 ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={APP}"],
                 ["docker", "images", "-q", "--filter", f"label=labdeploy.app={APP}"]):
        assert session_remote.run(what).stdout.strip() == "", what
    for path in (layout.app_dir(APP), layout.caddy_site(APP), layout.app_data(APP)):
        assert not session_remote.exists(path), path
    # Nor on this computer: PsyNet's preparation image (a build cache kept between deploys).
    assert "PsyNet preparation image on this computer" in gone.removed
    assert subprocess.run(["docker", "images", "-q", f"labdeploy-psynet-prepare/{APP}"], capture_output=True,
                          text=True, check=True).stdout.strip() == ""
    # Only its backups are kept (issue 17), and the result says where.
    assert f"backups in ~/{layout.app_backups(APP)}" in gone.kept
    apps.destroy(APP, session_remote, confirm=True, remove_data=True, remove_backups=True, export_check=False)
    with pytest.raises(deploy.UnknownApp):
        apps.destroy(APP, session_remote, confirm=True)
