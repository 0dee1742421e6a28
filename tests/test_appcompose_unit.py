"""Pure builders of a deploy: compose document, Caddy site, database SQL, secrets file, lock rules."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import yaml

from labdeploy.app import appcompose, history
from labdeploy.server import caddy, database, locks
from labdeploy.errors import ValidationError
from labdeploy.server.stack import StackSettings

COMMANDS = {"web": "gunicorn -b 0.0.0.0:$PORT app:app", "worker": "python -m w", "clock": "python -m c"}


def doc(**kw):
    args = dict(version="v1", commands=COMMANDS)
    args.update(kw)
    return appcompose.app_compose_document("stroop", "labdeploy/stroop:abc", **args)


def test_compose_has_the_seed_services_labels_and_network_alias():
    d = doc()
    assert list(d["services"]) == ["web", "worker", "clock", "redis"]
    assert "labdeploy.version" not in d["services"]["redis"]["labels"]  # an update must not recreate redis
    for name, svc in d["services"].items():
        assert svc["labels"]["labdeploy.app"] == "stroop"
        assert svc["labels"]["labdeploy.service"] == name
        assert svc["restart"] == "unless-stopped"
    web = d["services"]["web"]
    assert web["networks"]["dallinger"]["aliases"] == ["stroop-web"]
    assert "healthcheck" in web and "healthcheck" in d["services"]["redis"]
    assert d["networks"]["dallinger"] == {"external": True, "name": "dallinger"}
    assert "dallinger" not in d["services"]["redis"]["networks"]  # redis stays private to the app
    assert d["services"]["redis"]["volumes"] == ["redis_data:/data"]
    assert d["volumes"] == {"redis_data": {}}


def test_compose_environment_contract_and_no_secrets():
    d = doc(environment={"experiment_title": "Stroop"})
    env = d["services"]["worker"]["environment"]
    assert env["PORT"] == "5000" and env["HOST"] == "0.0.0.0" and env["HOME"] == "/tmp"
    assert env["experiment_title"] == "Stroop" and env["LABDEPLOY_VERSION"] == "v1"
    assert d["services"]["web"]["env_file"] == ["secrets.env"]
    text = appcompose.app_compose_yaml(d)
    assert "DATABASE_URL" not in text and "PASSWORD" not in text.upper().replace("DASHBOARD", "")


def test_compose_escapes_dollar_so_compose_does_not_interpolate():
    cmd = doc()["services"]["web"]["command"]
    assert cmd == ["sh", "-c", "exec gunicorn -b 0.0.0.0:$$PORT app:app"]
    assert yaml.safe_load(appcompose.app_compose_yaml(doc()))["services"]["web"]["command"] == cmd


def test_compose_defaults_to_dallinger_commands():
    d = appcompose.app_compose_document("stroop", "x/stroop:1", version="1")
    assert d["services"]["clock"]["command"] == ["sh", "-c", "exec dallinger_heroku_clock"]


def test_compose_without_a_clock_when_the_app_runs_none():
    d = doc(processes=("web", "worker"), commands={k: v for k, v in COMMANDS.items() if k != "clock"})
    assert list(d["services"]) == ["web", "worker", "redis"]
    assert d["services"]["worker"]["networks"] == ["default", "dallinger"]
    for bad in (("web",), ("web", "worker", "beat"), ("worker", "clock")):
        with pytest.raises(ValidationError, match="web and worker"):
            doc(processes=bad)


@pytest.mark.parametrize("bad", ["Stroop", "a b", "x;rm -rf /", "$(id)", "../etc", "a" * 41])
def test_compose_refuses_hostile_app_names(bad):
    with pytest.raises(ValidationError):
        appcompose.app_compose_document(bad, "x/y:1", version="1")


@pytest.mark.parametrize("bad", ["x y", "x;id", "$(id)", "../../x"])
def test_compose_refuses_bad_images_and_keys(bad):
    with pytest.raises(ValidationError):
        appcompose.app_compose_document("ok", bad, version="1")
    with pytest.raises(ValidationError):
        appcompose.app_compose_document("ok", "x/y:1", version="1", environment={bad: "1"})


def test_procfile(tmp_path):
    assert appcompose.read_procfile(tmp_path) == appcompose.DALLINGER_COMMANDS
    (tmp_path / "Procfile").write_text("# comment\nweb: gunicorn app:app\nworker: python -m w\nclock: python -m c\n")
    assert appcompose.read_procfile(tmp_path)["web"] == "gunicorn app:app"
    (tmp_path / "Procfile").write_text("web: gunicorn app:app\n")
    with pytest.raises(ValidationError, match="worker, clock"):
        appcompose.read_procfile(tmp_path)


def test_secrets_env_roundtrip_and_refusals():
    text = appcompose.secrets_env({"DATABASE_URL": "postgresql://a:b@postgresql:5432/a", "k": "v-1_2"})
    assert appcompose.parse_env(text) == {"DATABASE_URL": "postgresql://a:b@postgresql:5432/a", "k": "v-1_2"}
    for bad in ["a'b", 'a"b', "a$b", "a\nb", " a"]:
        with pytest.raises(ValidationError):
            appcompose.secrets_env({"k": bad})


def test_caddy_site_local_domain_is_plain_http():
    text = caddy.site_block("stroop", StackSettings(domain="localhost"))
    assert "http://stroop.localhost {" in text
    assert "reverse_proxy stroop-web:5000" in text
    assert "\ttls " not in text
    assert caddy.app_url("stroop", StackSettings(domain="localhost")) == "http://stroop.localhost/"
    assert caddy.app_url("s", StackSettings(domain="test", http_port=8080)) == "http://s.test:8080/"


def test_caddy_site_real_domain_gets_lets_encrypt_with_email():
    s = StackSettings(domain="exp.example.org", email="lab@example.org")
    text = caddy.site_block("stroop", s)
    assert text.splitlines()[1] == "stroop.exp.example.org, http://stroop.localhost {"
    assert "\ttls lab@example.org" in text
    assert caddy.app_url("stroop", s) == "https://stroop.exp.example.org/"


def test_scram_verifier_matches_rfc7677_construction():
    salt = b"0123456789abcdef"
    v = database.scram_verifier("secret", salt=salt)
    head, keys = v.split("$", 1)[1].split("$")
    assert head == "4096:" + base64.b64encode(salt).decode()
    salted = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    assert keys.split(":")[0] == base64.b64encode(stored).decode()
    assert database.scram_verifier("secret") != database.scram_verifier("secret")  # fresh salt


def test_provision_sql_has_limit_and_no_clear_password():
    pw = database.random_password()
    sql = database.provision_sql("my-exp", database.scram_verifier(pw), 15)
    assert pw not in sql
    assert "CONNECTION LIMIT 15" in sql and "app_my_exp" in sql
    assert "REVOKE ALL ON DATABASE app_my_exp FROM PUBLIC" in sql
    with pytest.raises(ValidationError):
        database.provision_sql("my-exp", "plain", 15)
    with pytest.raises(ValidationError):
        database.connection_limit(0)
    assert database.database_url("my-exp", "pw") == "postgresql://app_my_exp:pw@postgresql:5432/app_my_exp"
    assert "DROP DATABASE IF EXISTS app_my_exp;" in database.drop_sql("my-exp")


def test_lock_stale_rules():
    info = locks.LockInfo(app="a", token="t1", host="me", pid=100, ttl=600)
    common = dict(local_host="me", my_pid=200, held=set(), pid_alive=lambda pid: True)
    assert locks.stale_reason(info, 10, **common) is None
    assert "expired" in locks.stale_reason(info, 601, **common)
    assert "no longer runs" in locks.stale_reason(info, 10, **{**common, "pid_alive": lambda pid: False})
    # Same process, a token it no longer holds: an earlier attempt that lost its connection.
    assert "earlier attempt" in locks.stale_reason(info, 10, **{**common, "my_pid": 100})
    assert locks.stale_reason(info, 10, **{**common, "my_pid": 100, "held": {"t1"}}) is None
    other_machine = locks.LockInfo(app="a", token="t", host="laptop", pid=1, ttl=600)
    assert locks.stale_reason(other_machine, 10, **{**common, "pid_alive": lambda pid: False}) is None
    assert locks.stale_reason(None, 30, **common) is None
    assert locks.stale_reason(None, 300, **common) is not None


def test_lock_info_json_roundtrip_and_message():
    info = locks.LockInfo(app="a", token="t", version="v2", who="ana@laptop", operation="update")
    back = locks.LockInfo.from_json(info.to_json(), age=120)
    assert back.who == "ana@laptop" and back.age == 120
    err = locks.busy_error("a", back)
    assert "update (version v2) by ana@laptop 2 min ago" in err.message and "break_lock" in err.hint
    assert locks.LockInfo.from_json("{half") is None


def test_history_frame_keeps_order_and_types():
    recs = [history.DeployRecord(app="a", operation="deploy", version="1", outcome="success",
                                 started_at="2026-01-01T10:00:00+00:00", duration_s=12.5),
            history.DeployRecord(app="a", operation="update", version="2", outcome="rolled back",
                                 failed_step="launch", started_at="2026-01-02T10:00:00+00:00")]
    text = "".join(r.to_line() for r in recs) + '{"cut short'
    df = history.to_frame(history.parse_lines(text))
    assert list(df["outcome"]) == ["success", "rolled back"]
    assert str(df["started_at"].dtype).startswith("datetime64") and df["duration_s"].dtype == "float64"
    assert history.to_frame([]).columns.tolist()[:3] == ["started_at", "finished_at", "operation"]
