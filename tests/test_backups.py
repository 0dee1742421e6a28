"""Backups against the testbed: the stack's service backs up and drills a new app by itself,
keeps its schedule across a restart, backups are taken, listed, pulled, drilled and restored
(side by side and in place), faults (PostgreSQL killed mid-backup, a full disk, a damaged
dump, a dropped pull) lose nothing, and a study is rebuilt from pulled copies alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import on_server_filesystem
from labdeploy import backup, export
from labdeploy.app import apps, deploy
from labdeploy.server import layout, psql, stack
from deploy_support import deploy_kwargs, prepare_local_stack
from net_support import relayed_remote
from test_deploy import answer_all_trials, through_caddy


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"
APP = "t-bk-app"
COPY = "t-bk-app-restore"  # restore's default name beside APP
BIG = "t-bk-big"  # a database only (no app): big enough for a backup to be caught in the middle
LOST = "t-bk-lost"
ARCH = "t-bk-arch"
SEALED = "t-bk-sealed"
BIG_ROWS = 1_500_000


def forget(remote, name: str) -> None:
    """Remove a test app with its data and backups (whatever of it is there)."""
    try:
        apps.destroy(name, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True)
    except deploy.UnknownApp:
        pass
    psql.run_sql(remote, f"DROP DATABASE IF EXISTS app_{name.replace('-', '_')};")
    remote.run(["rm", "-rf", "--", f"{layout.app_backups(name)}"])


def counts(remote, app: str) -> dict:
    df = export.table_counts(app, remote)
    return {r.table: int(r.rows) for r in df.itertuples()}


def in_service(remote, *args: str, env: dict | None = None):
    flags = [x for k, v in (env or {}).items() for x in ("-e", f"{k}={v}")]
    return remote.run(["docker", "exec", *flags, "dallinger-backup", "sh", "/labdeploy/backup.sh", *args],
                      check=False, timeout=600)


def server_ls(remote, app: str) -> list[str]:
    return remote.run(["ls", "-a", layout.app_backups(app)], check=False).stdout.split()


@pytest.fixture(scope="module")
def deployed(testbed, session_remote):
    prepare_local_stack(session_remote, testbed)
    for name in (APP, COPY, BIG, LOST, ARCH, SEALED):
        forget(session_remote, name)
    deploy.deploy(EXAMPLE, APP, session_remote, **deploy_kwargs(testbed))
    answer_all_trials(testbed, APP)
    yield session_remote
    for name in (APP, COPY, BIG, LOST, ARCH, SEALED):
        forget(session_remote, name)


def test_prepare_runs_the_backup_service_as_the_login_user_with_a_private_folder(deployed, testbed):
    remote = deployed
    ids = remote.run(["sh", "-c", 'printf "%s:%s" "$(id -u)" "$(id -g)"']).stdout
    seen = remote.run(["docker", "inspect", "-f", "{{.Config.User}} {{.State.Running}} {{.Config.Image}}",
                       "dallinger-backup"]).stdout.split()
    assert seen == [ids, "true", testbed["images"]["postgres"]]  # the PostgreSQL image: nothing more to pull
    assert remote.run(["stat", "-c", "%a", layout.BACKUPS_ROOT]).stdout.strip() == "700"
    again = stack.prepare(remote, stack.StackSettings.for_images(testbed["images"], domain="localhost"))
    assert not again.written  # safe to run twice


def test_the_service_backs_up_and_drills_a_new_app_by_itself(deployed):
    remote = deployed
    deadline = time.monotonic() + 150  # the service looks every 60 s
    while True:
        df = backup.backups(APP, remote)
        scheduled = df[df["kind"] == "scheduled"]
        if len(scheduled) and scheduled["drill"].notna().any():
            break
        assert time.monotonic() < deadline, f"no scheduled backup and drill yet:\n{df}\n{backup.runs(APP, remote)}"
        time.sleep(5)
    row = scheduled.iloc[-1]
    now = counts(remote, APP)
    # The example's clock adds a job row now and then by itself: the dump holds every other row,
    # and no more jobs than there are now.
    assert row["checksum_ok"] and row["drill"] is True
    assert sum(now.values()) - now["jobs"] <= row["rows"] <= sum(now.values())
    health = backup.health(remote, APP).iloc[0]
    assert health["warning"] == "" and health["last_good_drill"] is not None and health["every_minutes"] == 60


def test_backup_now_matches_the_database_row_for_row_and_is_private(deployed):
    remote = deployed
    manifest = backup.now(APP, remote)
    assert manifest["kind"] == "manual" and manifest["rows"] == counts(remote, APP)
    assert manifest["version"] and manifest["tables"] == len(manifest["rows"])
    path = f"{layout.app_backups(APP)}/{manifest['dump']}"
    modes = remote.run(["stat", "-c", "%a", path, path[:-len(".dump")] + ".json"]).stdout.split()
    assert modes == ["600", "600"]
    assert hashlib.sha256(remote.get_bytes(path)).hexdigest() == manifest["sha256"]
    df = backup.backups(APP, remote)
    assert df.iloc[-1]["id"] == manifest["id"] and df["checksum_ok"].all()
    assert not [n for n in server_ls(remote, APP) if n.startswith(".tmp-")]


def test_the_schedule_survives_a_restart_of_the_service_without_a_duplicate_or_a_skipped_run(deployed):
    remote = deployed
    backup.schedule(remote, APP, every="10min")
    assert backup.health(remote, APP).iloc[0]["every_minutes"] == 10
    newest = int(backup.backups(APP, remote, checksums=False).iloc[-1]["time"].timestamp())

    def tick_at(epoch: int) -> int:
        """One round of the service as if the clock read `epoch`; the scheduled runs so far (the
        run log, which retention does not thin out as it does older backups of the same hour)."""
        assert in_service(remote, "tick", env={"BACKUP_NOW": str(epoch), "BACKUP_DRILL_EVERY": "9999999999"}
                          ).exit_status == 0
        runs = backup.runs(APP, remote)
        return int(((runs["kind"] == "scheduled") & (runs["ok"] == True)).sum())  # noqa: E712

    before = tick_at(newest + 599)  # not due before its interval
    assert tick_at(newest + 599) == before
    assert tick_at(newest + 600) == before + 1  # due: exactly one
    taken = backup.backups(APP, remote, checksums=False).iloc[-1]
    assert taken["kind"] == "scheduled" and taken["checksum_ok"] is None
    assert tick_at(newest + 600) == before + 1  # asked again at the same moment: no duplicate
    remote.run(["docker", "restart", "dallinger-backup"])  # what a restart of the stack does to it
    last = int(taken["time"].timestamp())
    assert tick_at(last + 599) == before + 1  # the service remembers from its files, not its memory
    assert tick_at(last + 600) == before + 2  # and the next one is not skipped
    kept = backup.backups(APP, remote, checksums=False)
    assert (kept["kind"] == "scheduled").sum() >= 1  # retention keeps the newest of the hour
    backup.schedule(remote, APP, every=60)


def test_pull_copies_only_what_the_folder_lacks_checked_and_private(deployed, tmp_path):
    remote = deployed
    to = tmp_path / "copies"
    first = backup.pull(remote, to, APP)
    on_server = backup.backups(APP, remote, checksums=False)
    assert first["pulled"].all() and sorted(first["id"]) == sorted(on_server["id"])
    folder = to / APP
    assert oct(to.stat().st_mode & 0o777) == "0o700" and oct(folder.stat().st_mode & 0o777) == "0o700"
    for row in first.itertuples():
        path = Path(row.file)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        manifest = json.loads(path.with_name(path.name[:-5] + ".json").read_text())
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    again = backup.pull(remote, to, APP)
    assert not again["pulled"].any()
    new = backup.now(APP, remote)
    third = backup.pull(remote, to, APP)
    assert third[third["pulled"]]["id"].tolist() == [new["id"]]  # only the new one travels


def test_encrypted_copies_keep_no_plain_dump_and_restore_only_with_the_key(deployed, tmp_path):
    import pyrage

    remote = deployed
    ident = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(f"{ident}\n")
    backup.now(APP, remote)
    pulled = backup.pull(remote, tmp_path / "sealed", APP, encrypt_to=str(ident.to_public()))
    names_ = sorted(p.name for p in (tmp_path / "sealed" / APP).iterdir())
    assert names_ and all(n.endswith(".dump.age") or n.endswith(".json") for n in names_), names_
    assert all(stat_mode(tmp_path / "sealed" / APP / n) == 0o600 for n in names_)
    again = backup.pull(remote, tmp_path / "sealed", APP, encrypt_to=str(ident.to_public()))
    assert not again["pulled"].any()  # an encrypted copy counts as had
    newest = sorted(pulled["file"])[-1]
    with pytest.raises(deploy.ValidationError):
        backup.restore(APP, remote, newest, into=SEALED)  # refused before connecting: nothing opens it
    result = backup.restore(APP, remote, newest, into=SEALED, identity=key)
    assert result.ok and int(result.counts["restored"].sum()) > 0
    assert not [p for p in (tmp_path / "sealed" / APP).iterdir() if p.name.startswith(".")]  # no plain copy left


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_damaged_dump_fails_its_drill_loudly_is_never_pulled_and_status_says_so(deployed, tmp_path):
    remote = deployed
    damaged = backup.now(APP, remote)
    path = f"{layout.app_backups(APP)}/{damaged['dump']}"
    size = damaged["size"]
    remote.run(["sh", "-c", 'printf "\\000\\377" | dd of="$1" bs=1 seek=200 conv=notrunc 2>/dev/null', "sh", path])
    try:
        df = backup.backups(APP, remote)
        assert df.set_index("id").loc[damaged["id"], "checksum_ok"] == False  # noqa: E712
        with pytest.raises(backup.BackupFailed) as info:
            backup.verify_backup(APP, remote, damaged["id"])
        assert "checksum" in info.value.message and info.value.hint
        health = backup.health(remote, APP).iloc[0]
        assert "drill failed" in health["warning"]
        status = __import__("labdeploy").monitor.status(remote, APP, backups=True)
        assert "drill failed" in status["backup_warning"].iloc[0]
        with pytest.raises(Exception) as pulled:
            backup.pull(remote, tmp_path / "copies", APP)
        assert "checksum" in str(pulled.value)
        assert not (tmp_path / "copies" / APP / damaged["dump"]).exists()
        assert not [p for p in (tmp_path / "copies" / APP).iterdir() if p.name.startswith(".")]
    finally:
        remote.run(["rm", "-f", "--", path, path[:-len(".dump")] + ".json"])
    assert size > 200
    ok = backup.verify_backup(APP, remote)  # the newest good one restores, and status is calm again
    assert ok["ok"] and backup.health(remote, APP).iloc[0]["warning"] == ""


def test_restore_side_by_side_has_the_same_rows_and_an_existing_name_is_refused(deployed):
    remote = deployed
    latest = backup.backups(APP, remote, checksums=False).iloc[-1]
    result = backup.restore(APP, remote, "latest")
    assert result.app == COPY and result.ok and not result.replaced
    copy, live = counts(remote, COPY), counts(remote, APP)
    # The live app's clock may add a job after the backup: every other table matches exactly.
    assert copy.pop("jobs") <= live.pop("jobs") and copy == live
    assert int(result.counts["restored"].sum()) == latest["rows"]
    with pytest.raises(backup.RestoreNeedsConfirmation) as info:
        backup.restore(APP, remote, "latest")
    assert info.value.code.startswith("confirmation.required")
    dbs = psql.query_df(remote, "SELECT datname FROM pg_database WHERE datname LIKE 'app_t_bk%'")["datname"].tolist()
    assert not [d for d in dbs if d.endswith("__restoring") or d.endswith("__replaced")]


def test_restore_into_the_app_itself_backs_it_up_first_and_the_app_serves_again(deployed, testbed):
    remote = deployed
    point = backup.now(APP, remote)
    answer_all_trials(testbed, APP)  # written after the backup: the restore takes them away
    after = counts(remote, APP)
    assert after != point["rows"]
    result = backup.restore(APP, remote, point["id"], into=APP, confirm=True)
    assert result.replaced and result.ok
    now = counts(remote, APP)  # the example's clock may have added a job since the restore
    assert {k: v for k, v in now.items() if k != "jobs"} == {k: v for k, v in point["rows"].items() if k != "jobs"}
    assert point["rows"]["jobs"] <= now["jobs"] <= point["rows"]["jobs"] + 3
    pre = backup.backups(APP, remote, checksums=False).set_index("id").loc[result.pre_restore_backup]
    # Nothing is lost for good: the pre-restore dump holds every row counted before, plus any job
    # the example's clock added by itself in between.
    assert pre["kind"] == "pre-restore" and sum(after.values()) <= pre["rows"] <= sum(after.values()) + 3
    deadline = time.monotonic() + 60
    while through_caddy(testbed, APP, "/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(1)
    assert answer_all_trials(testbed, APP) > 0  # and it takes participants again


def _big_database(remote) -> None:
    ident = "app_t_bk_big"
    psql.run_sql(remote, f"DROP DATABASE IF EXISTS {ident};\nCREATE DATABASE {ident};\n")
    psql.run_sql(remote, f"CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload "
                         f"FROM generate_series(1, {BIG_ROWS}) g;\n", database=ident)


def test_postgres_killed_in_the_middle_of_a_backup_fails_that_run_only(deployed, testbed):
    remote = deployed
    _big_database(remote)
    good = backup.now(BIG, remote)
    outcome = {}

    def run():
        try:
            backup.now(BIG, remote)
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while not [n for n in server_ls(remote, BIG) if n.startswith(".tmp-") and n.endswith(".dump")]:
        assert time.monotonic() < deadline and t.is_alive(), "the backup never started writing"
        time.sleep(0.05)
    remote.run(["docker", "kill", "dallinger-postgresql"])
    remote.run(["docker", "start", "dallinger-postgresql"])
    t.join(300)
    stack.wait_postgres(remote)
    assert isinstance(outcome.get("error"), backup.BackupFailed), outcome
    assert not [n for n in server_ls(remote, BIG) if n.startswith(".tmp-")]
    runs = backup.runs(BIG, remote)
    assert runs.iloc[-1]["ok"] == False and runs.iloc[-1]["error"]  # noqa: E712
    df = backup.backups(BIG, remote)
    assert df["id"].tolist() == [good["id"]] and df["checksum_ok"].all()  # the older one is intact
    assert backup.now(BIG, remote)["rows"] == {"filler": BIG_ROWS}  # and the next run succeeds
    deadline = time.monotonic() + 60
    while through_caddy(testbed, APP, "/health").status_code != 200:  # the app reconnects by itself
        assert time.monotonic() < deadline
        time.sleep(1)


@pytest.fixture
def small_backup_disk(deployed, testbed):
    """A real 2 MB filesystem where BIG's backups go, seen by the backup service."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs on the testbed server's disk needs root")
    remote = deployed
    folder = f"{remote.home}/{layout.app_backups(BIG)}"
    uid, gid = remote.run(["sh", "-c", 'printf "%s %s" "$(id -u)" "$(id -g)"']).stdout.split()
    subprocess.run(on_server_filesystem(testbed, ["mount", "-t", "tmpfs", "-o",
                                                  f"size=2m,uid={uid},gid={gid},mode=0700", "tmpfs", folder]),
                   check=True)
    remote.run(["docker", "restart", "dallinger-backup"])  # bind mounts take the submounts present at start
    try:
        yield folder
    finally:
        subprocess.run(on_server_filesystem(testbed, ["umount", folder]), check=False)
        remote.run(["docker", "restart", "dallinger-backup"])


def test_a_full_disk_during_a_backup_leaves_no_partial_file_and_the_app_keeps_running(deployed, testbed,
                                                                                   small_backup_disk):
    remote = deployed
    with pytest.raises(backup.BackupFailed) as info:
        backup.now(BIG, remote)
    assert "pg_dump failed" in info.value.message and info.value.hint
    left = [n for n in server_ls(remote, BIG) if n not in (".", "..", ".lock", "runs.jsonl")]
    assert left == [], left  # no partial dump or manifest under any name
    assert backup.runs(BIG, remote).iloc[-1]["ok"] == False  # noqa: E712  (recorded, once space was freed)
    assert through_caddy(testbed, APP, "/health").status_code == 200


def test_a_dropped_connection_during_a_pull_leaves_no_half_file_and_a_rerun_completes(deployed, testbed, tmp_path):
    remote = deployed
    relay, far = relayed_remote(testbed, tmp_path)
    to = tmp_path / "copies"

    def cut_midway(event) -> None:
        if type(event).__name__ == "Progress" and 0 < event.done < event.total:
            relay.close()  # gone for good: the reconnect fails too

    try:
        with pytest.raises(Exception) as info:
            backup.pull(far, to, BIG, reporter=cut_midway)
        assert "dropped" in str(info.value) or "connect" in str(info.value).lower()
    finally:
        relay.close()
        far.close()
    leftovers = [p.name for p in (to / BIG).iterdir()] if (to / BIG).exists() else []
    assert all(not n.startswith(".") for n in leftovers), leftovers  # no half file under any name
    assert all(n.endswith(".json") or (to / BIG / (n[:-5] + ".json")).exists() for n in leftovers)
    done = backup.pull(remote, to, BIG)
    assert len(done) == len(backup.backups(BIG, remote, checksums=False))
    for row in done.itertuples():
        manifest = json.loads(Path(row.file[:-5] + ".json").read_text())
        assert hashlib.sha256(Path(row.file).read_bytes()).hexdigest() == manifest["sha256"]


def test_a_new_app_starts_from_an_export_zip_or_a_pulled_dump_and_a_deployed_one_is_refused(deployed, testbed,
                                                                                             tmp_path):
    remote = deployed
    data = export.export(APP, remote, save_to=tmp_path / "exports")
    want = counts(remote, APP)
    result = deploy.deploy(EXAMPLE, ARCH, remote, archive=data.paths[0], **deploy_kwargs(testbed))
    got = counts(remote, ARCH)  # what launch wrote was replaced by the archive (the clock adds its own jobs)
    assert {t: got[t] for t in ("participants", "responses", "launches")} == \
        {t: want[t] for t in ("participants", "responses", "launches")} and result.url
    assert answer_all_trials(testbed, ARCH) > 0  # ids continue after the loaded rows
    with pytest.raises(deploy.ValidationError) as info:
        deploy.update(EXAMPLE, ARCH, remote, archive=data.paths[0], **deploy_kwargs(testbed))
    assert "new app" in info.value.message
    forget(remote, ARCH)
    backup.now(APP, remote)
    dump = backup.pull(remote, tmp_path / "copies", APP).sort_values("id")["file"].iloc[-1]
    expected = json.loads(Path(dump[:-5] + ".json").read_text())["rows"]
    deploy.deploy(EXAMPLE, ARCH, remote, archive=dump, **deploy_kwargs(testbed))
    got = counts(remote, ARCH)  # the dump as it was; launch adds its own bookkeeping rows after it
    assert {t: got[t] for t in ("participants", "responses")} == {t: expected[t] for t in ("participants", "responses")}
    assert answer_all_trials(testbed, ARCH) > 0
    with pytest.raises(deploy.ValidationError):
        deploy.deploy(EXAMPLE, "t-bk-nope", remote, archive=tmp_path / "missing.zip")  # refused before connecting


def test_destroy_with_data_keeps_the_backups_and_says_where(deployed):
    remote = deployed
    result = apps.destroy(COPY, remote, confirm=True, remove_data=True, export_check=False)
    assert not any("backups" in k for k in result.kept)  # a restored copy has no backups of its own
    backup.now(BIG, remote)
    assert remote.exists(layout.app_backups(BIG))
    with pytest.raises(Exception):
        apps.destroy(BIG, remote, confirm=True, remove_backups=True)  # backups go only with the data
    kept = apps.destroy(BIG, remote, confirm=True)  # the data first, then where the backups are
    assert kept.kept == ["database", f"backups in ~/{layout.app_backups(BIG)}"]
    assert "; kept database, backups in ~/" in kept.summary()
    result = apps.destroy(BIG, remote, confirm=True, remove_data=True, export_check=False)
    assert f"backups in ~/{layout.app_backups(BIG)}" in result.kept
    assert len(backup.backups(BIG, remote, checksums=False)) >= 2
    result = apps.destroy(BIG, remote, confirm=True, remove_data=True, remove_backups=True)
    assert "backups" in result.removed and not remote.exists(layout.app_backups(BIG))


def test_a_study_is_rebuilt_from_pulled_copies_after_the_server_lost_everything(deployed, testbed, tmp_path):
    remote = deployed
    deploy.deploy(EXAMPLE, LOST, remote, **deploy_kwargs(testbed))
    answer_all_trials(testbed, LOST)
    answer_all_trials(testbed, LOST)
    before = counts(remote, LOST)
    backup.now(LOST, remote)
    pulled = backup.pull(remote, tmp_path / "offsite", LOST)
    # The server loses the app, its data and its backups.
    apps.destroy(LOST, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True)
    assert not remote.exists(layout.app_backups(LOST))
    dump = sorted(pulled["file"])[-1]
    result = backup.restore(LOST, remote, dump, into=LOST)  # nothing of that name is left: no question
    assert result.ok and not result.replaced and counts(remote, LOST) == before  # the same row counts
    deploy.deploy(EXAMPLE, LOST, remote, existing_data="reuse", **deploy_kwargs(testbed))
    after = counts(remote, LOST)  # launching again adds its own bookkeeping rows, nothing else
    assert {t: after[t] for t in ("participants", "responses")} == {t: before[t] for t in ("participants", "responses")}
    assert answer_all_trials(testbed, LOST) > 0  # the study goes on
