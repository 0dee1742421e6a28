"""Remote commands as data (labdeploy.commands), without a server.

The measure of issue 16.3: no `sh -c` script is built from values outside the builder modules,
and inside them every script is a constant whose values travel as positional parameters. Then
every builder: its argv survives the trip through one shell quoting (`Remote.run` joins it
with shlex), a hostile value stays one argument and never enters the script, and the scripts
that need no Docker run here under a real `sh` (the Docker ones against a stand-in `docker`
that records what it was given). Parsers are read on sample outputs.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import shlex
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from labdeploy.commands import (apps, caddy, compose, containers, docker, entrypoints, files, hostfacts, images,
                                jobs, locks, network, postgres, registry, sections, shell, sshkeys, webswitch)
from labdeploy.errors import ValidationError

PACKAGE = Path(__file__).resolve().parent.parent / "labdeploy"
COMMANDS = PACKAGE / "commands"
HOSTILE = "a b'\"$(touch pwned);`id`;\n*x\\"

# Builders whose script is not a constant, and why (checked: nothing else may be on this list).
TEXT_SCRIPTS = {
    ("shell", "script"): "the shape itself: each call's script is checked where it is called",
    ("containers", "in_shell"): "the researcher's own command line, run inside their container",
    ("entrypoints", "process"): "the researcher's own Procfile line, run inside their container",
    ("entrypoints", "pooler_start"): "kept as text so Compose does not replace running poolers",
}


# ------------------------------------------------------------------ the measure

def _is_str(node, values) -> bool:
    return isinstance(node, ast.Constant) and node.value in values


def shell_scripts(tree: ast.AST):
    """(node, script) for every `"sh", "-c", SCRIPT` in a list, tuple or call, and every
    `script(SCRIPT, ...)` call of commands.shell."""
    for node in ast.walk(tree):
        groups = []
        if isinstance(node, (ast.List, ast.Tuple)):
            groups.append(node.elts)
        if isinstance(node, ast.Call):
            groups.append(node.args)
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "script" and node.args:
                yield node, node.args[0]
        for elts in groups:
            for i in range(len(elts) - 2):
                if _is_str(elts[i], ("sh", "bash", "/bin/sh")) and _is_str(elts[i + 1], ("-c",)):
                    yield node, elts[i + 2]


def _constant_built(node, known: set) -> bool:
    """A string made only of constants: literals, known constant names, f-strings and `+` of
    them, "sep".join([...]) of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (str, int, float))
    if isinstance(node, ast.Name):
        return node.id in known
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) or
                   (isinstance(v, ast.FormattedValue) and _constant_built(v.value, known)) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _constant_built(node.left, known) and _constant_built(node.right, known)
    if isinstance(node, ast.Tuple):
        return all(_constant_built(e, known) for e in node.elts)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and isinstance(node.func.value, ast.Constant) and len(node.args) == 1
            and isinstance(node.args[0], (ast.List, ast.Tuple))):
        return all(_constant_built(e, known) for e in node.args[0].elts)
    return False


def module_constants(path: Path) -> set:
    """Names a commands module binds at its top level to a string built only from constants."""
    tree = ast.parse(path.read_text())
    known: set = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # constants of sibling builder modules
            known.update(a.asname or a.name for a in node.names if a.name.isupper())
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if _constant_built(node.value, known):
                known.add(node.targets[0].id)
    return known


CONSTANTS = {p.stem: module_constants(p) for p in COMMANDS.glob("*.py")}


def _commands_imports(tree: ast.AST, package: str) -> dict:
    """name -> "module" (a commands module) or ("module", "NAME") (a name imported from one)."""
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            local = alias.asname or alias.name
            if target == "labdeploy.commands":
                found[local] = alias.name
            elif target.startswith("labdeploy.commands."):
                found[local] = (target.rsplit(".", 1)[1], alias.name)
    return found


def script_problems(path: Path) -> list[str]:
    """Scripts in a module outside labdeploy/commands that are not a builder module's constant."""
    rel = path.relative_to(PACKAGE.parent)
    package = ".".join(rel.with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text())
    imported = _commands_imports(tree, package)
    problems = []
    for node, script in shell_scripts(tree):
        if isinstance(script, ast.Constant) and isinstance(script.value, str):
            continue
        ok = False
        if isinstance(script, ast.Name) and isinstance(imported.get(script.id), tuple):
            module, name = imported[script.id]
            ok = name in CONSTANTS.get(module, set())
        elif isinstance(script, ast.Attribute) and isinstance(script.value, ast.Name):
            module = imported.get(script.value.id)
            ok = isinstance(module, str) and script.attr in CONSTANTS.get(module, set())
        if not ok:
            problems.append(f"{rel}:{node.lineno}: sh -c {ast.unparse(script)[:80]}")
    return problems


def builder_problems(path: Path) -> list[str]:
    """Scripts in a builder module that are not one of its (constant-built) module constants."""
    tree = ast.parse(path.read_text())
    mine = CONSTANTS[path.stem]
    problems = []
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        for node, script in shell_scripts(fn):
            if (path.stem, fn.name) in TEXT_SCRIPTS:
                continue
            if isinstance(script, ast.Constant) and isinstance(script.value, str):
                continue
            if isinstance(script, ast.Name) and script.id in mine:
                continue
            if (isinstance(script, ast.IfExp) and all(isinstance(b, ast.Name) and b.id in mine
                                                      for b in (script.body, script.orelse))):
                continue
            problems.append(f"commands/{path.name}:{node.lineno} {fn.name}(): sh -c {ast.unparse(script)[:80]}")
    return problems


def test_no_shell_script_is_built_from_values_outside_the_builder_modules():
    outside = [p for p in PACKAGE.rglob("*.py") if COMMANDS not in p.parents]
    problems = [problem for p in sorted(outside) for problem in script_problems(p)]
    assert not problems, "Build these in labdeploy/commands (values as $1, $2, ...):\n" + "\n".join(problems)


def test_every_builder_script_is_a_constant_and_its_values_travel_as_parameters():
    problems = [problem for p in sorted(COMMANDS.glob("*.py")) for problem in builder_problems(p)]
    assert not problems, "\n".join(problems)
    for module, fn in TEXT_SCRIPTS:
        source = (COMMANDS / f"{module}.py").read_text()
        assert f"def {fn}(" in source, f"{module}.{fn} is gone: take it off TEXT_SCRIPTS"


def test_the_measure_finds_a_script_built_from_a_value(tmp_path):
    (tmp_path / "labdeploy" / "x").mkdir(parents=True)
    bad = tmp_path / "labdeploy" / "x" / "m.py"
    bad.write_text("import shlex\nfrom ..commands import locks\nfrom ..commands.locks import ACQUIRE\n"
                   "def f(remote, path, SCRIPT):\n"
                   "    remote.run(['sh', '-c', f'rm -rf {shlex.quote(path)}'])\n"
                   "    remote.run(['env', 'A=1', 'sh', '-c', 'cd ' + path])\n"
                   "    remote.run(['sh', '-c', SCRIPT])\n"
                   "    remote.run(['sh', '-c', locks.ACQUIRE, 'sh', path])\n"
                   "    remote.run(['sh', '-c', ACQUIRE, 'sh', path])\n"
                   "    remote.run(['sh', '-c', 'true'])\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "labdeploy"
    try:
        found = script_problems(bad)
    finally:
        PACKAGE = saved
    assert sorted(p.split(": ", 1)[1] for p in found) == sorted([
        "sh -c f'rm -rf {shlex.quote(path)}'", "sh -c 'cd ' + path", "sh -c SCRIPT"])


def test_names_and_the_layout_are_all_the_builders_take_from_the_package():
    allowed = {(None, "names"), ("server", "layout"), ("names", None), ("server.layout", None)}
    for path in COMMANDS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                for alias in node.names:
                    assert (node.module, alias.name) in allowed or (node.module, None) in allowed, \
                        f"{path.name} imports {'.' * node.level}{node.module or ''} {alias.name}"


# ------------------------------------------------------------------ every builder: one quoting, hostile values

def _builders():
    """(name, argv, values that must each be one argument)"""
    v = HOSTILE
    return [
        ("locks.acquire", locks.acquire(v, v + "/lock"), [v, v + "/lock"]),
        ("locks.refresh", locks.refresh(v, v), [v]),
        ("locks.release", locks.release(v, "tok"), [v]),
        ("locks.break_", locks.break_(v, ""), [v, ""]),
        ("locks.read", locks.read(v), [v]),
        ("docker.remove_app_containers", docker.remove_app_containers("my-app"), ["label=labdeploy.app=my-app"]),
        ("docker.remove_app_images", docker.remove_app_images("my-app"), ["label=labdeploy.app=my-app"]),
        ("docker.remove_project_volume", docker.remove_project_volume(v, v), [v]),
        ("docker.running_images", docker.running_images(v), [v]),
        ("docker.restart", docker.restart(["abc", v], 3), [v, "3"]),
        ("containers.status", containers.status("my-app"), ["label=labdeploy.app=my-app"]),
        ("containers.exec_in", containers.exec_in("my-app", "web", ["echo", v], True), ["echo", v, "-i"]),
        ("containers.logs", containers.logs("my-app", "web", 10, "10m", True), ["--since", "10m"]),
        ("containers.stats", containers.stats(), [containers.STATS_FORMAT]),
        ("containers.started", containers.started("my-app"), ["label=labdeploy.app=my-app"]),
        ("images.pull", images.pull(v, v, config_dir="/home/u/x y"), [v, "DOCKER_CONFIG=/home/u/x y"]),
        ("images.build", images.build(v, ["docker", "build", "-t", v, "."]), [v, "docker", "."]),
        ("images.image_id", images.image_id(v), [v]),
        ("images.app_images", images.app_images("my-app"), ["label=labdeploy.app=my-app"]),
        ("images.layers", images.layers(), []),
        ("files.manifest", files.manifest(v), [v]),
        ("files.delete_listed", files.delete_listed(v), [v]),
        ("files.unpack", files.unpack(v), [v]),
        ("files.sizes", files.sizes(v), [v]),
        ("files.tar", files.tar(v), [v]),
        ("files.remove", files.remove(v, "-rf"), [v, "-rf"]),
        ("files.read", files.read(v), [v]),
        ("files.append", files.append(v, v), [v]),
        ("files.replace_and_append", files.replace_and_append(v, "deploy.json", "history.jsonl", v), [v]),
        ("postgres.psql", postgres.psql("app_x", "-c", v), ["app_x", v]),
        ("postgres.ready", postgres.ready(), [postgres.READY]),
        ("postgres.networks", postgres.networks(), []),
        ("caddy.reload", caddy.reload(), []),
        ("caddy.replace_in_place", caddy.replace_in_place(v), [v]),
        ("caddy.reload_mounted", caddy.reload_mounted(v, v + "f", force=True), [v, v + "f", "force"]),
        ("hostfacts.resolve", hostfacts.resolve("a.example.org", "b.example.org"), ["a.example.org", "b.example.org"]),
        ("compose.detect", compose.detect(), []),
        ("jobs.probe", jobs.probe("my-app", 12), [jobs.PROBE, "12"]),
        ("jobs.counts", jobs.counts(), ["label=labdeploy.app", jobs.COUNTS_LUA]),
        ("hostfacts.facts", hostfacts.facts(), []),
        ("apps.listing", apps.listing(), []),
        ("apps.traces", apps.traces("my-app", v, v + "2"), [v, v + "2"]),
        ("apps.data_traces", apps.data_traces(v, "my-app", v + "3"), [v, v + "3"]),
        ("network.reach", network.reach([("gitlab.com", 443)], 5), ["gitlab.com", "443", "5"]),
        ("sshkeys.install_key", sshkeys.install_key(v), [v]),
        ("registry.login", registry.login(v, v, config_dir="/c"), [v, "--password-stdin"]),
        ("registry.logout", registry.logout(v), [v]),
        ("entrypoints.pooler_start", entrypoints.pooler_start("app_x", "[pgbouncer]\n"), ["labdeploy-pooler"]),
    ]


@pytest.mark.parametrize("name, argv, values", _builders(), ids=[b[0] for b in _builders()])
def test_a_builder_gives_an_argv_that_one_quoting_keeps_whole(name, argv, values):
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), argv
    assert shlex.split(shlex.join(argv)) == argv  # Remote.run's quoting, undone by the server's shell
    for value in values:
        assert value in argv, f"{value!r} is not one argument of {argv!r}"
    if "-c" in argv and argv[argv.index("-c") - 1] == "sh" and name != "entrypoints.pooler_start":
        script = argv[argv.index("-c") + 1]
        assert HOSTILE not in script and "pwned" not in script


def test_names_are_checked_before_they_reach_a_command():
    for build in (lambda: docker.remove_app_containers("a;b"), lambda: containers.exec_in("ok", "web;x", ["true"]),
                  lambda: containers.logs("$(x)", None, 1, None, False), lambda: jobs.counts("A B"),
                  lambda: apps.traces("../x", "d", "s"), lambda: images.app_images("x y")):
        with pytest.raises(ValidationError):
            build()


# ------------------------------------------------------------------ scripts under a real sh

def run(argv, cwd, stdin=b"", env=None):
    return subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, env={**os.environ, **(env or {})})


def test_the_lock_is_taken_once_refreshed_released_and_broken_only_by_its_token(tmp_path):
    d = "odd locks $(x)"
    path = f"{d}/it's mine"
    first = run(locks.acquire(d, path), tmp_path, b'{"token": "tok-1"}')
    assert first.returncode == 0 and first.stdout.decode().strip() == locks.ACQUIRED
    second = run(locks.acquire(d, path), tmp_path, b'{"token": "tok-2"}')
    assert second.returncode == locks.BUSY
    age, text = locks.parse_holder(second.stdout.decode())
    assert age is not None and 0 <= age < 60 and json.loads(text) == {"token": "tok-1"}
    assert run(locks.refresh(path, "tok-2"), tmp_path, b"{}").returncode == locks.NOT_OURS
    assert run(locks.refresh(path, "tok-1"), tmp_path, b'{"token": "tok-1", "v": 2}').returncode == 0
    held = run(locks.read(path), tmp_path)
    assert held.returncode == 0 and json.loads(locks.parse_holder(held.stdout.decode())[1])["v"] == 2
    run(locks.release(path, "tok-2"), tmp_path)
    assert (tmp_path / path).is_dir()  # not ours to release
    assert run(locks.break_(path, "tok-2"), tmp_path).returncode == locks.NOT_OURS
    assert run(locks.break_(path, "tok-1"), tmp_path).returncode == 0 and not (tmp_path / path).exists()
    assert run(locks.read(path), tmp_path).returncode == locks.NO_LOCK
    run(locks.acquire(d, path), tmp_path, b'{"token": "tok-3"}')
    run(locks.release(path, "tok-3"), tmp_path)
    assert not (tmp_path / path).exists() and (tmp_path / d).is_dir()
    assert run(locks.break_(path), tmp_path).returncode == 0  # no lock: nothing to break


def test_lock_holder_ages():
    assert locks.parse_holder("42\n{}") == (42.0, "{}")
    assert locks.parse_holder("-3\n{}")[0] == 0.0  # the lock's clock runs ahead of the server's
    assert locks.parse_holder("garbage\n")[0] is None


def test_the_context_manifest_sees_files_modes_and_links_and_follows_none(tmp_path):
    ctx = tmp_path / "ctx dir"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    (ctx / "run.sh").write_text("#!/bin/sh\n")
    (ctx / "run.sh").chmod(0o755)
    (ctx / "sub").mkdir()
    (ctx / "sub" / "odd\nname").write_text("b")
    (ctx / "out").symlink_to("/etc/passwd")
    found = files.read_manifest(run(files.manifest("ctx dir"), tmp_path).stdout.decode())
    assert found["a.txt"][1] is False and found["run.sh"][1] is True and len(found["a.txt"][0]) == 64
    assert found["sub/odd\nname"][0] and found["out"] == ("link", "/etc/passwd")
    made = run(files.manifest("new dir"), tmp_path)
    assert made.returncode == 0 and (tmp_path / "new dir").is_dir()


def test_listed_files_are_deleted_and_a_tar_is_unpacked_in_the_folder(tmp_path):
    ctx = tmp_path / "c $(x)"
    (ctx / "gone").mkdir(parents=True)
    (ctx / "gone" / "f").write_text("x")
    (ctx / "keep").write_text("k")
    assert run(files.delete_listed("c $(x)"), tmp_path, b"gone/f\0").returncode == 0
    assert not (ctx / "gone").exists() and (ctx / "keep").exists()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        data = b"hello"
        info = tarfile.TarInfo("new/file.txt")
        info.size, info.mode = len(data), 0o640
        tar.addfile(info, io.BytesIO(data))
    assert run(files.unpack("c $(x)"), tmp_path, buf.getvalue()).returncode == 0
    assert (ctx / "new" / "file.txt").read_bytes() == b"hello"


def test_a_data_folder_s_sizes_and_a_missing_one(tmp_path):
    (tmp_path / "data" / "d").mkdir(parents=True)
    (tmp_path / "data" / "d" / "f").write_bytes(b"12345")
    assert files.read_sizes(run(files.sizes("data"), tmp_path).stdout.decode()) == [5]
    assert files.read_sizes(run(files.sizes("nope"), tmp_path).stdout.decode()) is None


def test_records_are_appended_and_replaced_whole(tmp_path):
    folder = "app folder $(x)"
    assert run(files.append(folder, "history.jsonl"), tmp_path, b'{"a": 1}\n').returncode == 0
    line = '{"b": "$(touch pwned)"}\n'
    assert run(files.replace_and_append(folder, "deploy.json", "history.jsonl", line), tmp_path,
               b'{"state": 1}\n').returncode == 0
    assert (tmp_path / folder / "history.jsonl").read_text() == '{"a": 1}\n' + line
    assert (tmp_path / folder / "deploy.json").read_text() == '{"state": 1}\n'
    assert not (tmp_path / "pwned").exists() and not (tmp_path / folder / ".deploy.json.tmp").exists()


def test_the_key_is_added_once_into_private_files(tmp_path):
    key = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz3 me@laptop\n"
    ssh_dir = str(tmp_path / "odd $(x) dir" / ".ssh")
    first = run(sshkeys.install_key(ssh_dir), tmp_path, key)
    assert first.returncode == 0 and sshkeys.read_install_key(first.stdout.decode())
    again = run(sshkeys.install_key(ssh_dir), tmp_path, b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz3 other\n")
    assert again.returncode == 0 and not sshkeys.read_install_key(again.stdout.decode())
    assert (Path(ssh_dir) / "authorized_keys").read_bytes() == key
    assert (Path(ssh_dir).stat().st_mode & 0o777, (Path(ssh_dir) / "authorized_keys").stat().st_mode & 0o777) == \
        (0o700, 0o600)


def test_the_reach_check_names_what_it_could_not_reach(tmp_path):
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))
        up, down = listening.getsockname()[1], closed.getsockname()[1]
        out = run(network.reach([("127.0.0.1", up), ("127.0.0.1", down)], 2), tmp_path).stdout.decode()
    assert network.read_reach(out) == {f"127.0.0.1:{down}": "tcp"}
    assert network.read_reach("dns gitlab.invalid 443\nok a 1\ngarbage\n") == {"gitlab.invalid:443": "dns"}


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that records its argv (NUL-terminated arguments, calls ended by a record
    separator) and answers `ps` with one container."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    (bindir / "docker").write_text(
        '#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a" >> "$LOG"; done; printf "\\036" >> "$LOG"\n'
        'case "$1" in ps) echo "c1 web";; esac\n')
    (bindir / "docker").chmod(0o755)

    def calls():
        text = log.read_text() if log.exists() else ""
        return [c.split("\0")[:-1] for c in text.split("\x1e")[:-1]]

    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LOG": str(log)}
    return env, calls


def test_a_command_in_a_container_arrives_as_its_own_arguments(tmp_path, fake_docker):
    env, calls = fake_docker
    res = run(containers.exec_in("my-app", "web", ["printf", "%s", HOSTILE], interactive=True), tmp_path, env=env)
    assert res.returncode == 0
    ps, exec_ = calls()
    assert ps[:5] == ["ps", "-q", "--filter", "label=labdeploy.app=my-app", "--filter"]
    assert exec_ == ["exec", "-i", "c1 web", "printf", "%s", HOSTILE]
    run(containers.exec_in("my-app", "web", ["true"]), tmp_path, env=env)
    assert calls()[-1] == ["exec", "c1 web", "true"]
    assert not (tmp_path / "pwned").exists()


def test_logs_are_read_per_container_with_the_options_as_given(tmp_path, fake_docker):
    env, calls = fake_docker
    res = run(containers.logs("my-app", None, "all", "2026-01-01T00:00:00Z", False), tmp_path, env=env)
    assert res.returncode == 0
    ps, logs = calls()
    assert ps == ["ps", "-a", "--filter", "label=labdeploy.app=my-app", "--format", containers.LOG_FORMAT]
    assert logs == ["logs", "-t", "--tail", "all", "--since", "2026-01-01T00:00:00Z", "c1"]
    run(containers.logs("my-app", "worker", 5, None, False), tmp_path, env=env)
    assert calls()[2][4:6] == ["--filter", "label=labdeploy.service=worker"]


def test_labelled_containers_are_removed_by_their_label_only(tmp_path, fake_docker):
    env, calls = fake_docker
    run(docker.remove_app_containers("my-app"), tmp_path, env=env)
    assert calls() == [["ps", "-aq", "--filter", "label=labdeploy.app=my-app"], ["rm", "-f", "c1", "web"]]


def test_a_file_is_written_whole_with_its_mode_and_its_folder_made(tmp_path):
    folder = "new $(x)/deeper"
    assert run(files.write(folder, "secrets.env", 0o600), tmp_path, b"K=v\n").returncode == 0
    target = tmp_path / folder / "secrets.env"
    assert target.read_text() == "K=v\n" and target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / folder).stat().st_mode & 0o777 == 0o755
    assert run(files.write(folder, "secrets.env", 0o644), tmp_path, HOSTILE.encode()).returncode == 0
    assert target.read_text() == HOSTILE and target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["secrets.env"]  # no temporary left
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError):
        files.write(folder, "../x", 0o644)


@pytest.fixture
def fake_caddy(tmp_path):
    """A `docker` for the site script: `inspect` says whether Caddy runs ($RUNNING), `exec ...
    reload` succeeds unless $REFUSE is set, and records what the site file held at the reload."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(
        '#!/bin/sh\ncase "$1" in inspect) echo "$RUNNING";; exec) cat "$SITE" > "$SEEN" 2>/dev/null; '
        '[ -z "$REFUSE" ] || { echo "Error: ambiguous" >&2; exit 1; };; esac\n')
    (bindir / "docker").chmod(0o755)
    sites = tmp_path / "caddy.d"
    sites.mkdir()
    return lambda **kw: {"PATH": f"{bindir}:/usr/bin:/bin", "RUNNING": "true", "REFUSE": "",
                         "SITE": str(sites / "app"), "SEEN": str(tmp_path / "seen"), **kw}


def test_a_site_is_written_and_reloaded_in_one_go_and_put_back_when_refused(tmp_path, fake_caddy):
    site, seen = tmp_path / "caddy.d" / "app", tmp_path / "seen"
    res = run(caddy.route("caddy.d", "app"), tmp_path, b"new site\n", env=fake_caddy(RUNNING="false"))
    assert res.returncode == caddy.NOT_RUNNING and not site.exists()  # nothing written
    assert run(caddy.route("caddy.d", "app"), tmp_path, b"first\n", env=fake_caddy()).returncode == 0
    assert site.read_text() == seen.read_text() == "first\n" and site.stat().st_mode & 0o777 == 0o644
    res = run(caddy.route("caddy.d", "app"), tmp_path, b"second\n", env=fake_caddy(REFUSE="1"))
    assert res.returncode == caddy.REFUSED and b"ambiguous" in res.stderr
    assert seen.read_text() == "second\n" and site.read_text() == "first\n"  # tried, then put back
    site.unlink()
    res = run(caddy.route("caddy.d", "app"), tmp_path, b"third\n", env=fake_caddy(REFUSE="1"))
    assert res.returncode == caddy.REFUSED and not site.exists()  # there was none before
    # Caddy imports every file of caddy.d: nothing but sites is ever left there, nor beside it.
    assert sorted(p.name for p in (tmp_path / "caddy.d").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "caddy.d", "seen"]


def test_the_old_web_container_is_stopped_even_when_it_has_stopped_already(tmp_path, fake_docker):
    env, calls = fake_docker
    cid = "0123abcd"
    res = run(webswitch.retire(cid, 3), tmp_path, env=env)  # `inspect` prints no pid: no drain
    assert res.returncode == 0
    assert calls()[-1] == ["stop", "-t", "3", cid]
    with pytest.raises(ValueError):
        webswitch.retire("x; rm -rf /", 3)


# ------------------------------------------------------------------ parsers on sample outputs

def test_one_section_parser_for_every_sectioned_output():
    text = "noise\n@@stack\n{\"a\": 1}\n@@app my-app\n@@not a marker\n\n@@end\n"
    assert sections.parse(text) == {"stack": '{"a": 1}\n', "app my-app": "", "not a marker": "\n", "end": ""}
    assert sections.parse(text, names=("stack", "app", "end")) == {
        "stack": '{"a": 1}\n', "app my-app": "@@not a marker\n\n", "end": ""}
    assert sections.parse("x:a\n1,2\nx:b\n", mark="x:") == {"a": "1,2\n", "b": ""}
    assert sections.parse("@@a\n1\n@@a\n2\n") == {"a": "2\n"}  # the later one counts
    assert sections.lines(" x \n\n  \ny\n") == [" x", "y"]


def test_the_apps_listing_traces_and_data_traces():
    stack, states, held = apps.read_listing('@@stack\n{"settings": {"domain": "lab.org"}}\n\n@@app good\n'
                                            '{"version": "v1"}\n@@app half\n\n@@app bad\n{cut\n@@locks\ngood\n'
                                            '_stack\n@@end\n')
    assert stack == {"settings": {"domain": "lab.org"}} and held == {"good", "_stack"}
    assert states == {"good": {"version": "v1"}, "half": {}, "bad": {}}
    assert apps.read_listing("") == (None, {}, set())
    assert apps.read_traces("dir\ncontainers\n") == {"dir": True, "site": False, "containers": True}
    assert apps.read_data_traces("files\n") == {"volume": False, "files": True}


def test_container_outputs():
    clock, found = containers.read_status('1764316800.5\n{"id": "x"}\n')
    assert clock == 1764316800.5 and found == [{"id": "x"}]
    assert containers.read_status("") == (None, [])
    rows, labels = containers.read_stats('{"ID": "abc"}\nnoise\n' + containers.STATS_MARK +
                                         "\n384e643fa3066298c000\tx_web_1\tx\t\tweb\n")
    assert rows == [{"ID": "abc"}] and labels == {"384e643fa306": ("x", "web")}
    started = containers.read_started("web 2026-11-30T09:56:45.123456789Z\npgbouncer 2026-11-30T09:56:45.2Z\n"
                                      "clock garbage\n")
    assert set(started) == {"web", "pgbouncer"} and started["web"] < started["pgbouncer"]
    assert started["web"][1] == 123456789


def test_image_outputs():
    assert images.image_id_in("@@id sha256:abc\n") == "sha256:abc" and images.image_id_in("Step 1/3") is None
    assert images.read_layers('["sha256:a"]\n\n["sha256:b", "sha256:c"]\nwarning\n') == [
        ["sha256:a"], ["sha256:b", "sha256:c"]]
    assert images.read_app_images('{"Repository": "r", "Tag": "t"}\n\n') == [{"Repository": "r", "Tag": "t"}]
    assert "@@id " in images.PULL and '"$ref"' in images.BUILD


def test_engine_outputs():
    out = "/dallinger-postgresql true postgres:15\n/dallinger-caddy false caddy:2\n"
    assert docker.parse_running_images(out) == {"dallinger-postgresql": "postgres:15"}
    assert docker.parse_is_running(0, "true\n") and not docker.parse_is_running(1, "true")
    assert compose.read_detect("v2\n") == ["docker", "compose"] and compose.read_detect("v1") == ["docker-compose"]
    assert compose.read_detect("none") is None
    assert postgres.is_ready(0, "1\n") and not postgres.is_ready(0, "")
    nets = json.dumps({"dallinger": {"IPAddress": "172.18.0.2"}, "other": {"IPAddress": "10.0.0.2"}})
    assert postgres.address_on(nets) == "172.18.0.2"
    assert postgres.address_on(json.dumps({"other": {"IPAddress": "10.0.0.2"}})) == "10.0.0.2"
    assert postgres.address_on(json.dumps({"dallinger": {"IPAddress": ""}})) is None


def test_job_outputs():
    assert jobs.read_probe("starting\n@@status failed\nTraceback\n") == ("failed", "Traceback\n", "starting\n")
    assert jobs.read_probe("nothing") == ("unknown", "", "nothing")
    assert jobs.read_counts("a default 1 2 3 4 5 6\nbad line\nb q x 0 0 0 0 0\n") == [
        ("a", "default", 1, 2, 3, 4, 5, 6)]


def test_host_facts_are_read_by_section():
    out = "@@docker_path\n/usr/bin/docker\n@@meminfo\nMemTotal: 1 kB\n\n@@disk\n@@end\n"
    assert hostfacts.read_facts(out) == {"docker_path": ["/usr/bin/docker"], "meminfo": ["MemTotal: 1 kB"],
                                         "disk": [], "end": []}


def test_the_pooler_script_keeps_its_values_in_their_place():
    assert entrypoints.pooler_start("app_x", "[pgbouncer]\n")[:2] == ["sh", "-c"]
    with pytest.raises(ValueError):
        entrypoints.pooler_script("app_x; reboot", "[pgbouncer]\n")
    with pytest.raises(ValueError):
        entrypoints.pooler_script("app_x", "a = 1\nLABDEPLOY_INI\nexec evil\n")
    assert entrypoints.compose_escaped(["a$b", "$$"]) == ["a$$b", "$$$$"]
    assert entrypoints.process("gunicorn app") == ["sh", "-c", "exec gunicorn app"]
    assert entrypoints.process("x", pooled=True)[2].startswith(f"PYTHONPATH={entrypoints.PYTHON_MOUNT}$")


def test_the_shell_shape():
    assert shell.script("echo \"$1\"", 1, "two") == ["sh", "-c", "echo \"$1\"", "sh", "1", "two"]
