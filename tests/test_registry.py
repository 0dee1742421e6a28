"""Registry logins, push and pull against the testbed's TLS + htpasswd registry."""

from __future__ import annotations

import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from labdeploy.images import registry, transfer
from labdeploy.progress import Collector, Progress, WarningEvent
from labdeploy.images.registry import Credentials

DATA = Path(__file__).parent / "data" / "img_experiment"


@pytest.fixture
def creds(testbed) -> Credentials:
    r = testbed["registry"]
    return Credentials(r["address"], r["user"], r["password"])


@pytest.fixture(autouse=True)
def clean_session():
    registry.forget_session()
    yield
    registry.forget_session()


@pytest.fixture
def private_config(remote):
    """A private DOCKER_CONFIG folder on the server, so logins here never touch the shared ~/.docker."""
    path = f"dallinger/.build/t-img-login-{uuid.uuid4().hex[:8]}"
    yield path
    remote.run(["rm", "-rf", "--", path], check=False)


def test_local_login_checks_password_and_warns_without_helper(creds, home):
    events = Collector()
    result = registry.login_local(creds, reporter=events)
    assert result.stored == "memory (this session only)"
    warnings = events.of(WarningEvent)
    assert warnings and "unencrypted" in warnings[0].message and "credsStore" in warnings[0].hint
    assert registry.session_credentials(creds.registry) == creds
    assert not (home / ".docker" / "config.json").exists()  # nothing written in plain text


def test_local_login_wrong_password(creds, home):
    bad = Credentials(creds.registry, creds.username, "not-the-password")
    with pytest.raises(registry.RegistryAuthFailed) as info:
        registry.login_local(bad)
    assert info.value.hint and "not-the-password" not in str(info.value)
    assert registry.session_credentials(creds.registry) is None


def test_local_login_unreachable_registry(creds, home):
    with pytest.raises(registry.RegistryUnreachable) as info:
        registry.login_local(Credentials("10.250.0.1:5999", creds.username, creds.password))
    assert "10.250.0.1:5999" in info.value.message and info.value.hint


def test_server_login_wrong_password_and_unreachable(remote, creds, private_config):
    with pytest.raises(registry.RegistryAuthFailed):
        registry.login_server(remote, Credentials(creds.registry, creds.username, "wrong"),
                              docker_config=private_config)
    with pytest.raises(registry.RegistryUnreachable):
        registry.login_server(remote, Credentials("10.250.0.1:5999", creds.username, creds.password),
                              docker_config=private_config)


def test_server_login_and_logout(remote, creds, private_config):
    events = Collector()
    registry.login_server(remote, creds, docker_config=private_config, reporter=events)
    config = remote.get_bytes(f"{private_config}/config.json").decode()
    assert creds.registry in config and creds.password not in config
    # The warning names the file the password really is in (this folder, not ~/.docker).
    warnings = [w.message for w in events.of(WarningEvent) if "unencrypted" in w.message]
    assert len(warnings) == 1 and f"~/{private_config}/config.json" in warnings[0], warnings
    registry.logout_server(remote, creds.registry, docker_config=private_config)
    assert creds.registry not in remote.get_bytes(f"{private_config}/config.json").decode()


def test_server_login_folder_must_be_inside_the_home(remote, creds, private_config):
    # An absolute path under the home is the same folder as its relative form.
    absolute = f"{remote.home}/{private_config}"
    registry.login_server(remote, creds, docker_config=absolute)
    assert creds.registry in remote.get_bytes(f"{private_config}/config.json").decode()
    registry.logout_server(remote, creds.registry, docker_config=absolute)
    # Outside the home, or out of it with '..': refused, nothing made on the server.
    outside = f"/tmp/t-img-login-{uuid.uuid4().hex[:8]}"
    escape = f"../{remote.home.rstrip('/').rsplit('/', 1)[1]}-t-img-{uuid.uuid4().hex[:8]}"
    try:
        for folder in (outside, escape, f"{remote.home}/../x", "."):
            with pytest.raises(registry.ValidationError) as info:
                registry.login_server(remote, creds, docker_config=folder)
            assert "home" in str(info.value)
        assert not remote.run(["test", "-e", outside], check=False).ok
        assert not remote.exists(escape)
    finally:  # should a login get through, it leaves nothing behind
        remote.run(["rm", "-rf", "--", outside, escape], check=False)


def test_credential_helper_gets_secret_on_stdin(creds, home, tmp_path, monkeypatch):
    # A stand-in helper: real ones (pass, secretservice, osxkeychain) need a desktop keyring that
    # can't run here. It records its argv and stdin so we see where the secret travelled.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-labtest"
    helper.write_text("#!/bin/sh\n"
                      "if [ \"$1\" != store ]; then echo 'credentials not found in native keychain'; exit 1; fi\n"
                      f"echo \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text('{"credsStore": "labtest"}')
    events = Collector()
    result = registry.login_local(creds, reporter=events)
    assert result.stored == "credential helper labtest"
    assert not events.of(WarningEvent)
    assert (tmp_path / "argv").read_text().strip() == "store"
    assert creds.password in (tmp_path / "stdin").read_text()


def test_registry_mode_push_and_pull_by_digest(remote, testbed, creds, tmp_path, home):
    app = f"t-img-{uuid.uuid4().hex[:8]}"
    experiment = tmp_path / "experiment"
    shutil.copytree(DATA, experiment)
    # A layer no other run has: the other server's run may push the same files at the same time,
    # and a layer the registry already has is not pushed (no progress to see).
    (experiment / "run-id.txt").write_text(app)
    base = f"{creds.registry}/t-img"
    registry.login_local(creds)
    events = Collector()
    try:
        got = transfer.deliver(remote, experiment, app=app, mode="registry", base_name=base,
                               build_args={"BASE": testbed["images"]["python"]}, reporter=events,
                               credentials=creds, logout_after_pull=True)
        assert got.ref == f"{base}/{app}:{got.tag}" and got.digest.startswith("sha256:")
        assert transfer.server_image_id(remote, got.ref) == got.image_id
        digests = remote.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", got.ref]).stdout
        assert got.digest in digests
        pushes = [e for e in events.of(Progress) if e.step == "push image"]
        assert pushes and all(e.total and e.item for e in pushes)
        pulls = [e for e in events.of(Progress) if e.step == "pull on the server"]
        assert pulls and pulls[-1].unit == "layers" and pulls[-1].done == pulls[-1].total
        # Logged out after the pull: the private login folder is gone, and as the password was
        # never left stored, no warning says it was.
        assert not remote.exists(f"{transfer.build_dir(app)}/registry-login")
        assert not [w for w in events.of(WarningEvent) if "unencrypted" in w.message], events.of(WarningEvent)
    finally:
        remote.run(["sh", "-c", f"docker image ls -q --filter label=labdeploy.app={app} | sort -u | "
                                f"xargs -r docker rmi -f"], check=False)
        remote.run(["rm", "-rf", "--", transfer.build_dir(app)], check=False)
        import docker

        client = docker.from_env()
        for image in client.images.list(filters={"label": f"labdeploy.app={app}"}):
            client.images.remove(image.id, force=True)


class _PsWatcher:
    """Samples the process lists of both machines while a login runs."""

    def __init__(self, remote) -> None:
        self.remote = remote
        self.stop = threading.Event()
        self.local: list[str] = []
        self.server: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.local.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
            self.server.append(self.remote.run(["ps", "-eo", "args"], check=False).stdout)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def test_sentinel_password_never_leaks(remote, creds, home, private_config, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)  # every logger, paramiko's and docker's included
    sentinel = f"SENTINEL-{uuid.uuid4().hex}"
    events = Collector()
    errors = []
    with _PsWatcher(remote) as ps:
        for _ in range(3):  # several attempts so the sampler sees the logins in flight
            for action in (lambda c: registry.login_local(c, reporter=events),
                           lambda c: registry.login_server(remote, c, docker_config=private_config, reporter=events)):
                with pytest.raises(registry.RegistryAuthFailed) as info:
                    action(Credentials(creds.registry, creds.username, sentinel))
                errors.append(info.value)
            # The real password, logging in successfully on the server, must not show either.
            registry.login_server(remote, creds, docker_config=private_config, reporter=events)
    assert len(ps.local) > 1 and len(ps.server) > 1
    for listing in ps.local + ps.server:
        assert sentinel not in listing and creds.password not in listing
    assert all(sentinel not in str(e) and sentinel not in repr(e) for e in errors)
    assert all(sentinel not in repr(e) for e in events.events)
    assert caplog.records and sentinel not in caplog.text and creds.password not in caplog.text
    assert sentinel not in repr(Credentials(creds.registry, creds.username, sentinel))
    for path in home.rglob("*"):
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes(), path
    server_files = remote.run(["sh", "-c", f"grep -rl {sentinel} dallinger/.build .docker 2>/dev/null; true"]).stdout
    assert server_files.strip() == ""


def test_ask_credentials_uses_getpass(monkeypatch, creds):
    import getpass

    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed-secret")
    got = registry.ask_credentials(creds.registry, creds.username)
    assert got == Credentials(creds.registry, creds.username, "typed-secret")
    assert "typed-secret" not in prompts[0] and creds.registry in prompts[0]
    with pytest.raises(registry.ValidationError):
        registry.ask_credentials("https://bad/url", "u")
