"""Real Dallinger and PsyNet experiments: recognise the folder, work out what deploy needs.

`spec(experiment_dir, ...)` returns an `ExperimentSpec`: the image build inputs (the folder's
own Dockerfile, or one generated here), the command of each process, the plain environment
and the secret environment. Deploy writes the plain part into the compose file and the
secret part into the app's 0600 `secrets.env`; nothing here touches a server.

Configuration follows Dallinger 12.4's `dallinger.config`: every section of an INI file is
merged, keys are lower-cased by configparser, `~/.dallingerconfig` is overridden by the
experiment's `config.txt`, and both by the environment (here: explicit `overrides`). Every
config key reaches the app as an environment variable of the same name, which Dallinger
reads with top priority. A key is secret when Dallinger registers it as sensitive or its
name contains one of Dallinger's sensitive words.
"""

from __future__ import annotations

import configparser
import os
import re
import secrets as _secrets
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from .errors import LabdeployError, ValidationError

KINDS = ("dallinger", "psynet")
MODES = ("debug", "sandbox", "live")
CONFIG_FILE = "config.txt"
GLOBAL_CONFIG = ".dallingerconfig"
PORT = 5000

# What Dallinger's own docker-ssh compose file runs; PsyNet images ship the same scripts.
COMMANDS = {
    "web": "dallinger_heroku_web",
    "worker": "dallinger_heroku_worker",
    "clock": "dallinger_heroku_clock",
}

# Dallinger's environment contract. `host` (lower case) is the config key gunicorn binds
# to; Dallinger's default is localhost, which Caddy could not reach.
BASE_ENV = {"PORT": str(PORT), "HOST": "0.0.0.0", "HOME": "/tmp", "host": "0.0.0.0"}

# dallinger.config: keys registered with sensitive=True (12.4) ...
SENSITIVE_KEYS = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "dashboard_password", "dashboard_user",
    "database_url", "heroku_auth_token", "prolific_api_token", "smtp_password",
})
# ... and Configuration.is_sensitive's substrings. Our own additions are secret too.
SENSITIVE_WORDS = ("access_id", "access_key", "password", "secret", "token",
                   "passwd", "api_key", "apikey", "private_key", "credential")
EXTRA_SECRET_ENV = frozenset({"FLASK_SECRET_KEY", "DATABASE_URL", "REDIS_URL"})

# Lower-case synonyms configparser can deliver (Dallinger maps them to the registered key).
SYNONYMS = {
    "aws_default_region": "aws_region",
    "team": "heroku_team",
    "qualification_blacklist": "mturk_qualification_blocklist",
    "dallinger_email_password": "smtp_password",
}

# Keys the deployment sets itself (Dallinger's docker-ssh drops the same ones): the bind
# address is ours, the database URL is the app's own on the server, a Heroku token has no
# business on an SSH server.
DROPPED_KEYS = frozenset({"host", "database_url", "heroku_auth_token", "port"})

# Not copied into the image: version control, caches, local environments.
CONTEXT_EXCLUDES = (".git", ".hg", "__pycache__", ".venv", "venv", "env", ".tox", ".pytest_cache",
                    ".mypy_cache", ".ipynb_checkpoints", "node_modules", ".DS_Store", "*.pyc")

DEFAULT_PYTHON_BASE = "python:3.11-slim"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The name, optional extras, then nothing or a version operator (not `dallinger-extras`).
_REQ_NAME = re.compile(r"^\s*(dallinger|psynet)\s*(\[[^\]]*\])?\s*((?:[<>=!~].*)?)$", re.IGNORECASE)
_VERSION_SPEC = re.compile(r"^[<>=!~,.*0-9A-Za-z+ _-]*$")


# --------------------------------------------------------------------------- the folder

@dataclass(frozen=True)
class ExperimentFolder:
    """What a Dallinger/PsyNet experiment folder holds."""

    path: Path
    kind: str                       # "dallinger" or "psynet"
    has_dockerfile: bool
    requirements: tuple[str, ...]   # requirements.txt lines (comments dropped)
    has_constraints: bool
    dallinger_requirement: Optional[str]  # e.g. "dallinger==12.4.0"
    psynet_requirement: Optional[str]

    @property
    def dallinger_version(self) -> Optional[str]:
        return _pinned(self.dallinger_requirement)

    @property
    def psynet_version(self) -> Optional[str]:
        return _pinned(self.psynet_requirement)


def is_experiment_folder(path) -> bool:
    """True when `path` looks like a Dallinger/PsyNet experiment (experiment.py + config.txt)."""
    p = Path(path).expanduser()
    return (p / "experiment.py").is_file() and (p / CONFIG_FILE).is_file()


def recognise(path) -> ExperimentFolder:
    """Read a Dallinger/PsyNet experiment folder, or say clearly why it isn't one."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValidationError(f"The experiment folder {str(p)!r} does not exist.",
                              "Give the folder that holds experiment.py and config.txt.")
    missing = [n for n in ("experiment.py", CONFIG_FILE) if not (p / n).is_file()]
    if missing:
        raise ValidationError(
            f"{p.name!r} is not a Dallinger/PsyNet experiment folder: it has no {' or '.join(missing)}.",
            "A Dallinger or PsyNet experiment has experiment.py and config.txt at the top of its folder; "
            "choose that folder.")
    p = p.resolve()
    reqs = _requirement_lines(p / "requirements.txt")
    constraints = _requirement_lines(p / "constraints.txt")
    dallinger_req = _find_requirement(reqs, "dallinger") or _find_requirement(constraints, "dallinger")
    psynet_req = _find_requirement(reqs, "psynet") or _find_requirement(constraints, "psynet")
    uses_psynet = psynet_req is not None or re.search(
        r"^\s*(from|import)\s+psynet\b", (p / "experiment.py").read_text(errors="replace"), re.MULTILINE)
    return ExperimentFolder(
        path=p, kind="psynet" if uses_psynet else "dallinger",
        has_dockerfile=(p / "Dockerfile").is_file(), requirements=tuple(reqs),
        has_constraints=(p / "constraints.txt").is_file(),
        dallinger_requirement=dallinger_req, psynet_requirement=psynet_req)


def _requirement_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _find_requirement(lines: list[str], name: str) -> Optional[str]:
    """'dallinger==12.4.0' from 'dallinger[data]==12.4.0 ; python_version>="3.10"' and the like."""
    for line in lines:
        m = _REQ_NAME.match(line.split(";", 1)[0])
        if m and m.group(1).lower() == name:
            spec = m.group(3).strip().replace(" ", "")
            if not _VERSION_SPEC.match(spec):
                continue  # a URL or path: not something we can pin from
            return f"{name}{spec}"
    # An editable Dallinger is deployed as a wheel file (`file:dallinger-12.4.0-py3-none-any.whl`).
    for line in lines:
        m = re.match(rf"^file:{name}-([0-9][A-Za-z0-9.+!_]*)-", line, re.IGNORECASE)
        if m:
            return f"{name}=={m.group(1)}"
    return None


def _pinned(requirement: Optional[str]) -> Optional[str]:
    """'12.4.0' from 'dallinger==12.4.0'; None for a range or no pin."""
    m = re.match(r"^[A-Za-z]+==([A-Za-z0-9.+!_-]+)$", requirement or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- configuration

def read_config_file(path) -> dict[str, str]:
    """Every key of every section, as Dallinger reads an INI file (later sections win)."""
    path = Path(path)
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        data: dict[str, str] = {}
        for section in parser.sections():
            data.update(dict(parser.items(section)))
    except configparser.Error as exc:
        raise ValidationError(f"{path} can't be read as a Dallinger config file: {exc}".splitlines()[0],
                              "Fix the file: it needs [Section] headers and 'key = value' lines; write a "
                              "literal % as %%.") from None
    return {SYNONYMS.get(k, k): v for k, v in data.items()}


def global_config_path(home=None) -> Path:
    return Path(home if home is not None else os.path.expanduser("~")) / GLOBAL_CONFIG


def merged_config(experiment_dir, *, home=None, overrides: Optional[Mapping[str, object]] = None) -> dict[str, str]:
    """~/.dallingerconfig, then config.txt over it, then `overrides` over both (Dallinger's order)."""
    merged = read_config_file(global_config_path(home))
    merged.update(read_config_file(Path(experiment_dir) / CONFIG_FILE))
    for key, value in (overrides or {}).items():
        merged[SYNONYMS.get(key, key)] = _text(value)
    return merged


def _text(value) -> str:
    # Dallinger casts env strings with strtobool for booleans; "true"/"false" read back right.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_sensitive(key: str) -> bool:
    """Dallinger's rule (registered sensitive keys, or a sensitive word in the name), plus our own."""
    lower = key.lower()
    return (lower in SENSITIVE_KEYS or key in EXTRA_SECRET_ENV
            or any(word in lower for word in SENSITIVE_WORDS))


def split_env(config: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret): secret values go to secrets.env, never into the compose file."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for key, value in config.items():
        (secret if is_sensitive(key) else plain)[key] = value
    return plain, secret


# --------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class ExperimentSpec:
    """Everything deploy needs to run a Dallinger/PsyNet experiment, as data."""

    folder: ExperimentFolder
    commands: dict[str, str]        # service -> command line (web, worker, clock)
    env: dict[str, str]             # plain environment for the compose file
    secret_env: dict[str, str] = field(repr=False)  # for secrets.env (0600) only
    dockerfile: Optional[str] = None  # generated text; None when the folder has its own
    mode: str = "live"
    clock_on: bool = False          # Dallinger starts a clock process only when this is set
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was not passed on
    port: int = PORT
    launch_path: str = "/launch"
    uid_from_config: bool = False   # config.txt names the experiment id; else a deploy keeps the app's own

    @property
    def kind(self) -> str:
        return self.folder.kind

    @property
    def services(self) -> tuple[str, ...]:
        """The process services Dallinger itself would run for this experiment."""
        return ("web", "worker", "clock") if self.clock_on else ("web", "worker")

    def write_context(self, dest) -> Path:
        """Write the image's build context to `dest` (made if missing, must be empty).

        A copy of the folder without caches and version control; config.txt without its
        secret keys (Dallinger too writes a filtered config.txt into its images: the
        secrets reach the app through secrets.env); the generated Dockerfile if any.
        """
        return write_context(self, dest)


def spec(experiment_dir, *, home=None, overrides: Optional[Mapping[str, object]] = None,
         mode: Optional[str] = None, base_image: Optional[str] = None,
         flask_secret_key: Optional[str] = None, experiment_uid: Optional[str] = None) -> ExperimentSpec:
    """What deploy needs for this experiment folder.

    `overrides` play the part of Dallinger's command-line config options (highest priority).
    `mode` (debug / sandbox / live) overrides config.txt's, as `dallinger docker-ssh
    deploy|sandbox` does; without it config.txt's mode is kept (default live).
    `base_image` is the Python base of a generated Dockerfile (ignored when the folder
    has its own); the build argument BASE_IMAGE overrides it at build time.
    A fresh FLASK_SECRET_KEY and experiment id are made unless given (give the old key on
    update so sessions survive).
    """
    folder = recognise(experiment_dir)
    config = merged_config(folder.path, home=home, overrides=overrides)
    if mode is not None:
        if mode not in MODES:
            raise ValidationError(f"Unknown Dallinger mode {mode!r}.",
                                  "Use 'sandbox' for a trial run or 'live' for real participants "
                                  "('debug' only for local testing).")
        config["mode"] = mode
    config.setdefault("mode", "live")
    if config["mode"] not in MODES:
        raise ValidationError(f"config.txt sets mode = {config['mode']!r}, which Dallinger doesn't know.",
                              "Set mode to sandbox, live or debug.")
    # Dallinger's own default is off; PsyNet's Experiment turns it on unless config.txt says no.
    clock_on = _truthy(config.get("clock_on", "true" if folder.kind == "psynet" else "false"), "clock_on")

    env: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key, value in config.items():
        if key in DROPPED_KEYS:
            skipped[key] = "set by labdeploy for the server"
            continue
        name = key.upper() if key in ("aws_access_key_id", "aws_secret_access_key") else key
        if not _ENV_NAME.fullmatch(name):
            # e.g. Dallinger's `chrome-path`, a local bot setting: not readable from the environment.
            skipped[key] = "not a valid environment variable name"
            continue
        if "\n" in value or "\r" in value:
            raise ValidationError(f"The config value of {key!r} spans several lines.",
                                  "Environment variables can't hold line breaks; put the value on one line "
                                  "(or use Dallinger's `file:` form for long text).")
        env[name] = value
    if "aws_region" in config:
        env["AWS_DEFAULT_REGION"] = config["aws_region"]  # boto reads this name
    # The experiment's id: Dallinger's own deploy writes a fresh uuid into config.txt;
    # recruiters and PsyNet's launch need it. Keep config.txt's if it sets one.
    uid = config.get("id") or experiment_uid or str(uuid.uuid4())
    env["id"] = env["DALLINGER_UID"] = uid
    env["FLASK_SECRET_KEY"] = flask_secret_key or _secrets.token_urlsafe(24)
    plain, secret = split_env(env)
    plain.update(BASE_ENV)
    dockerfile = None if folder.has_dockerfile else dockerfile_for(folder, base_image=base_image)
    return ExperimentSpec(folder=folder, commands=dict(COMMANDS), env=plain, secret_env=secret,
                          uid_from_config=bool(config.get("id")),
                          dockerfile=dockerfile, mode=config["mode"], clock_on=clock_on, skipped=skipped)


def _truthy(value: str, key: str) -> bool:
    lower = str(value).strip().lower()
    if lower in ("y", "yes", "t", "true", "on", "1"):
        return True
    if lower in ("n", "no", "f", "false", "off", "0", ""):
        return False
    raise ValidationError(f"{key} = {value!r} is neither true nor false.", f"Set {key} to true or false.")


# --------------------------------------------------------------------------- the image

def dockerfile_for(folder: ExperimentFolder, *, base_image: Optional[str] = None) -> str:
    """A Dockerfile for a folder without one: a Python base with Dallinger (or PsyNet) at the
    version the requirements ask for, the requirements, the folder, Dallinger's frontend files."""
    base = base_image or DEFAULT_PYTHON_BASE
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", base):
        raise ValidationError(f"The base image {base!r} is not a valid image name.",
                              "Use an image reference such as 'python:3.11-slim'.")
    package = "psynet" if folder.kind == "psynet" else "dallinger"
    requirement = (folder.psynet_requirement if package == "psynet" else folder.dallinger_requirement) or package
    version = _pinned(requirement)
    check = (f"import importlib.metadata as m, sys; sys.exit(m.version({package!r}) != {version!r})"
             if version else f"import importlib.util as u, sys; sys.exit(u.find_spec({package!r}) is None)")
    constrain = " -c /tmp/constraints.txt" if folder.has_constraints else ""
    lines = [
        f"# Generated by labdeploy for the {folder.kind} experiment {folder.path.name!r} (it has no Dockerfile).",
        "# The base can be changed without editing this file: --build-arg BASE_IMAGE=...",
        f"ARG BASE_IMAGE={base}",
        "FROM ${BASE_IMAGE}",
        "ENV PORT=5000 HOME=/tmp PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive",
    ]
    if folder.has_constraints:
        lines.append("COPY constraints.txt /tmp/constraints.txt")
    lines += [
        f"# Install {requirement} unless the base already has it; pip builds psycopg2 from source,",
        "# which needs the PostgreSQL headers and a compiler.",
        f"RUN if python3 -c \"{check}\" 2>/dev/null; then echo '{requirement}: already in the base image'; \\",
        "    else apt-get update && apt-get install -y --no-install-recommends libpq-dev gcc python3-dev \\",
        "      && rm -rf /var/lib/apt/lists/* \\",
        f"      && python3 -m pip install --no-cache-dir \"{requirement}\"{constrain}; fi",
        "WORKDIR /experiment",
    ]
    if any("git+" in line for line in folder.requirements):
        # Requirements from git repositories need git (Dallinger's own image build does the same).
        lines.append("RUN apt-get update && apt-get install -y --no-install-recommends git openssh-client "
                     "&& rm -rf /var/lib/apt/lists/*")
    if folder.requirements:
        lines += ["COPY requirements.txt /experiment/requirements.txt",
                  f"RUN python3 -m pip install --no-cache-dir -r requirements.txt{constrain}"]
    lines += [
        "COPY . /experiment",
        "# Dallinger serves templates and static files from the working directory; add its",
        "# frontend files, the experiment's own files winning (as Dallinger's own bundling does).",
        "RUN cp -rn \"$(python3 -c 'import dallinger, os; print(os.path.dirname(dallinger.__file__))')/frontend/.\" "
        "/experiment/",
        f'CMD ["{COMMANDS["web"]}"]',
        "",
    ]
    return "\n".join(lines)


def write_context(experiment_spec: ExperimentSpec, dest) -> Path:
    from . import images

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise LabdeployError(f"The build folder {dest} is not empty.", "Give an empty or new folder.")
    src = images.local_folder(experiment_spec.folder.path).resolve()
    _copy_tree(src, dest)
    _write_filtered_config(src / CONFIG_FILE, _replaceable(dest / CONFIG_FILE))
    if experiment_spec.dockerfile is not None:
        _replaceable(dest / "Dockerfile").write_text(experiment_spec.dockerfile)
    return dest


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy the experiment folder without following any link (shutil.copytree would copy what
    a link points to, wherever that is). Links inside the folder are copied as links, as
    Docker sends them; a link out of it is refused, unless .dockerignore leaves it out
    anyway. Everything is checked before the first file is copied."""
    from . import images

    rules = images.read_ignore_rules(src)
    excluded = shutil.ignore_patterns(*CONTEXT_EXCLUDES)
    plan: list[tuple[str, str, Optional[str]]] = []  # (kind, rel, link target)
    for dirpath, dirnames, filenames in os.walk(src):  # never descends into linked folders
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dropped = excluded(dirpath, dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in dropped)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if name in dropped:
                continue
            rel = rel_dir + name
            full = src / rel
            if full.is_symlink():
                # Docker would not send an ignored link; these three are always sent (config.txt:
                # read below to write the filtered copy).
                if rules.excluded(rel) and rel not in (".dockerignore", "Dockerfile", CONFIG_FILE):
                    continue
                plan.append(("link", rel, images.link_target(src, rel)))
            elif full.is_file():
                plan.append(("file", rel, None))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        plan.extend(("dir", rel_dir + d, None) for d in dirnames)
    for kind, rel, target in sorted(plan, key=lambda item: item[1]):
        out = dest / rel
        if kind == "dir":
            out.mkdir(exist_ok=True)
        elif kind == "link":
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, out, follow_symlinks=False)


def _replaceable(path: Path) -> Path:
    # The copy may hold config.txt or Dockerfile as a link; a written file must not go through it.
    if path.is_symlink():
        path.unlink()
    return path


def _write_filtered_config(src: Path, dst: Path) -> None:
    """config.txt without secret keys; the file is otherwise kept line for line."""
    out = []
    for line in src.read_text(errors="replace").splitlines(keepends=True):
        key = re.split(r"\s*[=:]", line.strip(), maxsplit=1)[0].lower()
        if line[:1].strip() and not line.lstrip().startswith(("#", ";", "[")) and is_sensitive(key):
            out.append(f"# {key}: secret, given to the app through its secrets.env\n")
        else:
            out.append(line)
    dst.write_text("".join(out))


# --------------------------------------------------------------------------- PsyNet's preparation

# What `psynet deploy ssh` does on the researcher's computer before Dallinger builds the
# image (psynet.command_line._pre_launch / _prepare, PsyNet 13): record the deployment
# (.deploy/deployment_info.json; PsyNet's git lookup is skipped, images have no git), then
# prepare, which fills a throwaway database and saves it as .deploy/database_template.zip,
# then bundle PsyNet's extra files.
# `_prepare` is PsyNet's internal function: there is no public API for this step.
PSYNET_PREPARE_SCRIPT = r"""
import os, uuid
from psynet import deployment_info
deployment_info.write_all(dict(
    redeploying_from_archive=False, mode=os.environ.get("mode", "live"), is_local_deployment=False,
    is_ssh_deployment=True, server=os.environ["LABDEPLOY_SERVER"], app=os.environ["LABDEPLOY_APP"],
    folder_name=os.path.basename(os.getcwd()), secret=uuid.uuid4(), origin=None,
    ssh_host=os.environ["LABDEPLOY_SERVER"], ssh_user=os.environ.get("LABDEPLOY_SSH_USER", ""),
    locale=os.environ.get("locale", "en")))
from psynet.experiment import get_experiment
get_experiment().update_deployment_id()
from psynet.command_line import _prepare
_prepare()
# Then the files PsyNet asks Dallinger to bundle (Experiment.extra_files: its templates,
# scripts, .deploy, ...), as Dallinger's assembly does: the experiment's own files win,
# PsyNet's win over Dallinger's frontend files (already copied in by the Dockerfile).
import filecmp, shutil, dallinger
from dallinger.utils import ExplicitFileSource
root, front = os.getcwd(), os.path.join(os.path.dirname(dallinger.__file__), "frontend")
for src, dst in ExplicitFileSource(root).map_locations_to(root):
    if os.path.abspath(src) == os.path.abspath(dst):
        continue
    stock = os.path.join(front, os.path.relpath(dst, root))
    if os.path.exists(dst) and not (os.path.isfile(stock) and filecmp.cmp(stock, dst, shallow=False)):
        continue
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
print("labdeploy: PsyNet preparation done")
"""


def prepare_psynet(context_dir, *, app: str, server_host: str, postgres_image: str, redis_image: str,
                   env: Optional[Mapping[str, str]] = None, build_args: Optional[Mapping[str, str]] = None,
                   ssh_user: str = "", reporter=None) -> list[str]:
    """Run PsyNet's preparation for the build context in `context_dir` and add its results
    (.deploy/, source_code.zip, ...) to it. Needs Docker on this computer: the context's image
    is built here and run once next to a throwaway PostgreSQL and Redis, all removed after.
    Returns the names added to the context."""
    import subprocess
    import tempfile
    import time

    from . import names
    from .progress import LogLine, null_reporter

    report = reporter or null_reporter
    from .appcompose import image_ref

    names.app_name(app)
    names.host(server_host)
    image_ref(postgres_image)
    image_ref(redis_image)
    ctx = Path(context_dir)
    # The image keeps a stable name per app so Docker's layer cache spares the next run
    # PsyNet's installation; the containers and network are per run and removed after.
    image = f"labdeploy-psynet-prepare/{app}:latest"
    tag = f"labdeploy-psynet-prepare-{app}-{_secrets.token_hex(3)}"
    net, pg, redis, prep = (f"{tag}-net", f"{tag}-pg", f"{tag}-redis", f"{tag}-run")

    def docker(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise LabdeployError("PsyNet's preparation needs Docker on this computer, and there is none.",
                                 "Install Docker here (or deploy from a computer that has it).") from None
        if check and res.returncode != 0:
            raise LabdeployError(f"PsyNet's preparation failed at `docker {args[0]}`:\n"
                                 + (res.stderr or res.stdout)[-3000:],
                                 "Read the output above; run `psynet prepare` in the experiment folder to "
                                 "reproduce it with a local database.")
        return res

    password = _secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="labdeploy-psynet-") as tmp:
        env_file = Path(tmp) / "env"  # secrets go to the containers through a 0600 file, not argv
        values = {**(env or {}), "POSTGRES_USER": "dallinger", "POSTGRES_DB": "dallinger",
                  "POSTGRES_PASSWORD": password,
                  "DATABASE_URL": f"postgresql://dallinger:{password}@{pg}:5432/dallinger",
                  "REDIS_URL": f"redis://{redis}:6379/0", "LABDEPLOY_APP": app,
                  "LABDEPLOY_SERVER": server_host, "LABDEPLOY_SSH_USER": ssh_user}
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in values.items()))
        try:
            report(LogLine("building the image locally for PsyNet's preparation", "psynet"))
            docker("build", "-q", "-t", image, *[a for k, v in (build_args or {}).items()
                                               for a in ("--build-arg", f"{k}={v}")], str(ctx))
            docker("network", "create", net)
            docker("run", "-d", "--name", pg, "--network", net, "--env-file", str(env_file), postgres_image)
            docker("run", "-d", "--name", redis, "--network", net, redis_image,
                   "redis-server", "--protected-mode", "no")
            for _ in range(600):  # PostgreSQL's first start (initdb) takes a few seconds
                if docker("exec", pg, "pg_isready", "-U", "dallinger", check=False).returncode == 0:
                    break
                time.sleep(0.5)
            report(LogLine("running PsyNet's preparation", "psynet"))
            res = docker("run", "--name", prep, "--network", net, "--env-file", str(env_file),
                         "-w", "/experiment", image, "python3", "-P", "-c", PSYNET_PREPARE_SCRIPT, check=False)
            for line in (res.stdout + res.stderr).splitlines()[-40:]:
                report(LogLine(line, "psynet"))
            if res.returncode != 0:
                raise LabdeployError("PsyNet's preparation failed:\n" + (res.stderr or res.stdout)[-3000:],
                                     "Read the traceback above: it comes from the experiment's code or "
                                     "PsyNet. `psynet prepare` in the experiment folder reproduces it.")
            added = sorted({line.split(" ", 1)[1].split("/")[2] for line in docker("diff", prep).stdout.splitlines()
                            if line[:1] in "AC" and line.split(" ", 1)[1].startswith("/experiment/")}
                           - {"__pycache__"})
            for entry in added:
                target = ctx / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)  # else docker cp would nest the new folder inside the old
                elif target.exists() or target.is_symlink():
                    target.unlink()
                docker("cp", f"{prep}:/experiment/{entry}", str(ctx / entry))
            report(LogLine(f"PsyNet prepared: {', '.join(added)}", "psynet"))
            return added
        finally:
            for c in (prep, pg, redis):
                docker("rm", "-f", "-v", c, check=False)
            docker("network", "rm", net, check=False)
