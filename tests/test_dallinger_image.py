"""The real Dallinger image: build our example from labdeploy's generated Dockerfile on the
testbed's Dallinger 12.4 base, run web and worker with PostgreSQL and Redis in the LOCAL
engine, and launch it. Proves the spec (commands, environment, secrets) before any deploy.

Needs the testbed's images (scripts/testbed up builds the Dallinger base once, cached).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from labdeploy.experiment import dallinger

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dallinger-hello"
DALLINGER_TABLES = {"info", "network", "node", "notification", "participant", "question", "recruitment",
                    "transformation", "transmission", "vector"}


def docker(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=check, text=True, capture_output=True, input=input)


def wait_until(what: str, probe, attempts: int = 120, pause: float = 1.0, logs=None):
    """Poll `probe` until it returns a truthy value; fail with the containers' logs otherwise."""
    last = None
    for _ in range(attempts):
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last error
            last = exc
        time.sleep(pause)
    pytest.fail(f"{what} did not happen; last error: {last!r}\n{logs() if logs else ''}")


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def base_image(testbed) -> str:
    image = testbed["images"].get("dallinger")
    if not image or docker("image", "inspect", image, check=False).returncode != 0:
        pytest.fail("The testbed has no Dallinger image; run `sudo scripts/testbed up` (it builds it once).",
                    pytrace=False)
    return image


@pytest.fixture(scope="module")
def built(base_image, tmp_path_factory):
    """Our example's image, built from the generated Dockerfile (Docker's cache makes reruns quick)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".dallingerconfig").write_text("[Email]\nsmtp_password = hunter2-not-real\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))  # the release cache (platformdirs) too
        mp.delenv("XDG_CACHE_HOME", raising=False)
        spec = dallinger.spec(EXAMPLE, home=home, base_image=base_image)
    ctx = spec.write_context(tmp_path_factory.mktemp("ctx") / "context")
    tag = f"t-dal-hello:{secrets.token_hex(4)}"
    r = docker("build", "-q", "-t", tag, str(ctx), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    yield spec, tag
    docker("rmi", "-f", tag, check=False)


def test_generated_image_has_dallinger_and_frontend(built):
    spec, tag = built
    out = docker("run", "--rm", tag, "sh", "-c",
                 "pip show dallinger | grep ^Version; ls static/scripts/dallinger2.js templates/exp.html; "
                 "grep -c smtp_password config.txt || true").stdout
    assert "Version: 12.4.0" in out
    # The versions Dallinger 12.4.0 was tested with (its published constraints), not pip's newest:
    # rq 3 would fail every worker job.
    rq = docker("run", "--rm", tag, "python3", "-c", "import importlib.metadata as m; print(m.version('rq'))")
    assert rq.stdout.strip() == "2.12.0" and "rq==2.12.0" in spec.build_files[".labdeploy/constraints.txt"]
    assert "static/scripts/dallinger2.js" in out and "templates/exp.html" in out
    # The secret from ~/.dallingerconfig is not baked into the image's config.txt.
    assert "hunter2" not in docker("run", "--rm", tag, "cat", "config.txt").stdout


def test_web_and_worker_launch_with_postgres_and_redis(built, testbed):
    spec, tag = built
    images = testbed["images"]
    suffix = secrets.token_hex(3)
    net, pg, redis = f"t-dal-net-{suffix}", f"t-dal-pg-{suffix}", f"t-dal-redis-{suffix}"
    web, worker = f"t-dal-web-{suffix}", f"t-dal-worker-{suffix}"
    password = secrets.token_urlsafe(12)
    env_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    secrets_file = env_dir / f"t-dal-secrets-{suffix}.env"
    containers = [web, worker, redis, pg]

    def logs() -> str:
        return "\n".join(f"--- {c}\n" + docker("logs", "--tail", "40", c, check=False).stdout
                         + docker("logs", "--tail", "40", c, check=False).stderr for c in containers)

    try:
        docker("network", "create", net)
        # The superuser password reaches initdb through a file, never argv.
        pw_file = env_dir / f"t-dal-pgpw-{suffix}"
        pw_file.write_text(password)
        pw_file.chmod(0o644)
        docker("run", "-d", "--name", pg, "--network", net, "-e", "POSTGRES_USER=dallinger",
               "-e", "POSTGRES_DB=dallinger", "-e", "POSTGRES_PASSWORD_FILE=/run/pw",
               "-v", f"{pw_file}:/run/pw:ro", images["postgres"])
        docker("run", "-d", "--name", redis, "--network", net, "--network-alias", "redis", images["redis"],
               "redis-server", "--protected-mode", "no")
        wait_until("PostgreSQL accepting connections",
                   lambda: docker("exec", pg, "pg_isready", "-U", "dallinger", check=False).returncode == 0,
                   logs=logs)
        # Secrets (the database URL, FLASK_SECRET_KEY, smtp_password) go through an env file, as secrets.env.
        secret_env = dict(spec.secret_env, DATABASE_URL=f"postgresql://dallinger:{password}@{pg}:5432/dallinger",
                          REDIS_URL="redis://redis:6379/0")
        fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in secret_env.items()))
        env_args = [a for k, v in spec.env.items() for a in ("-e", f"{k}={v}")]
        for name, service in ((web, "web"), (worker, "worker")):
            docker("run", "-d", "--name", name, "--network", net, "--env-file", str(secrets_file), *env_args,
                   tag, *spec.commands[service].split())
        ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", web).stdout.strip()

        wait_until("the web process listening", lambda: _listening(ip, spec.port), logs=logs)
        req = urllib.request.Request(f"http://{ip}:{spec.port}{spec.launch_path}", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                result = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"POST /launch answered {exc.code}: {exc.read()[:2000]!r}\n{logs()}")
        assert result.get("status") == "success", result

        tables = docker("exec", pg, "psql", "-U", "dallinger", "-d", "dallinger", "-Atc",
                        "select tablename from pg_tables where schemaname='public'").stdout.split()
        assert DALLINGER_TABLES <= set(tables), tables
        # The experiment's own setup ran: one chain with its greeting source.
        nodes = docker("exec", pg, "psql", "-U", "dallinger", "-d", "dallinger", "-Atc",
                       "select type from node").stdout.split()
        assert "greeting_source" in nodes

        with urllib.request.urlopen(f"http://{ip}:{spec.port}/ad?recruiter=hotair&assignmentId=A1&hitId=H1"
                                    f"&workerId=W1&mode=sandbox", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "Begin" in page, page[:500]
        # The worker process is alive (it would exit at once on a bad REDIS_URL or config).
        assert docker("inspect", "-f", "{{.State.Running}}", worker).stdout.strip() == "true", logs()
    finally:
        for c in containers:
            docker("rm", "-f", "-v", c, check=False)
        docker("network", "rm", net, check=False)
        secrets_file.unlink(missing_ok=True)
        (env_dir / f"t-dal-pgpw-{suffix}").unlink(missing_ok=True)
