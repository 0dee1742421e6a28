"""Real Dallinger and PsyNet experiments: recognise the folder, work out what deploy needs.

`spec(experiment_dir, ...)` returns an `ExperimentSpec`: the image build inputs (the folder's
own Dockerfile, or one generated here), the command of each process, the plain environment
and the secret environment. Deploy writes the plain part into the compose file and the
secret part into the app's 0600 `secrets.env`; nothing here touches a server.

A generated Dockerfile (for a folder without one, for PsyNet's stock template, or asked for
with dockerfile="generated") installs the Dallinger (and PsyNet) release in use with the
versions that Dallinger release was tested with, merged with the experiment's own
constraints.txt (labdeploy.dallingerrelease, labdeploy.constraintsfile); that constraints file
travels in the build context, so the build needs no network for it and the content tag
follows it.

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

from . import folder
from . import dallingerrelease
from .constraintsfile import Note
from ..errors import LabdeployError, ValidationError

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
                              "Give the folder that holds experiment.py and config.txt.",
                              code="invalid.experiment.folder_missing")
    missing = [n for n in ("experiment.py", CONFIG_FILE) if not (p / n).is_file()]
    if missing:
        raise ValidationError(
            f"{p.name!r} is not a Dallinger/PsyNet experiment folder: it has no {' or '.join(missing)}.",
            "A Dallinger or PsyNet experiment has experiment.py and config.txt at the top of its folder; "
            "choose that folder.", code="invalid.experiment.not_dallinger")
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
                              "literal % as %%.", code="invalid.config.unreadable") from None
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
    dockerfile: Optional[str] = None  # generated text; None when the folder's own is built
    mode: str = "live"
    clock_on: bool = False          # Dallinger starts a clock process only when this is set
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was not passed on
    port: int = PORT
    launch_path: str = "/launch"
    uid_from_config: bool = False   # config.txt names the experiment id; else a deploy keeps the app's own
    dockerfile_name: str = "Dockerfile"  # the file in the build context that Docker builds
    build_files: dict[str, str] = field(default_factory=dict)  # context path -> text (the image's constraints)
    release: Optional[dallingerrelease.Choice] = None  # the Dallinger/PsyNet the generated image pins
    notes: tuple[Note, ...] = ()    # what the researcher should read (log lines and warnings)

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
        secrets reach the app through secrets.env); the generated Dockerfile and its
        constraints file, if any.
        """
        return write_context(self, dest)


def spec(experiment_dir, *, home=None, overrides: Optional[Mapping[str, object]] = None,
         mode: Optional[str] = None, base_image: Optional[str] = None,
         flask_secret_key: Optional[str] = None, experiment_uid: Optional[str] = None,
         dockerfile: str = "Dockerfile") -> ExperimentSpec:
    """What deploy needs for this experiment folder.

    `overrides` play the part of Dallinger's command-line config options (highest priority).
    `mode` (debug / sandbox / live) overrides config.txt's, as `dallinger docker-ssh
    deploy|sandbox` does; without it config.txt's mode is kept (default live).
    `base_image` is the Python base of a generated Dockerfile (ignored when the folder
    has its own); the build argument BASE_IMAGE overrides it at build time.
    A fresh FLASK_SECRET_KEY and experiment id are made unless given (give the old key on
    update so sessions survive).
    `dockerfile`: "Dockerfile" (default) builds the folder's own Dockerfile, except PsyNet's stock
    template, which can't build outside PsyNet's own tooling (see `stock_template`); another
    file name builds that file; "generated" builds labdeploy's Dockerfile even when the folder
    has one. A generated Dockerfile installs with the constraints of the Dallinger release in
    use (labdeploy.dallingerrelease: read from PyPI once, then cached).
    """
    folder = recognise(experiment_dir)
    own_dockerfile, notes = choose_dockerfile(folder, dockerfile)
    config = merged_config(folder.path, home=home, overrides=overrides)
    if mode is not None:
        if mode not in MODES:
            raise ValidationError(f"Unknown Dallinger mode {mode!r}.",
                                  "Use 'sandbox' for a trial run or 'live' for real participants "
                                  "('debug' only for local testing).", code="invalid.config.mode")
        config["mode"] = mode
    config.setdefault("mode", "live")
    if config["mode"] not in MODES:
        raise ValidationError(f"config.txt sets mode = {config['mode']!r}, which Dallinger doesn't know.",
                              "Set mode to sandbox, live or debug.", code="invalid.config.mode")
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
                                  "(or use Dallinger's `file:` form for long text).", code="invalid.config.multiline")
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
    generated = release = None
    build_files: dict[str, str] = {}
    if own_dockerfile is None:
        release, build_files, more = image_constraints(folder)
        notes += more
        generated = dockerfile_for(folder, release, base_image=base_image)
    return ExperimentSpec(folder=folder, commands=dict(COMMANDS), env=plain, secret_env=secret,
                          uid_from_config=bool(config.get("id")),
                          dockerfile=generated, mode=config["mode"], clock_on=clock_on, skipped=skipped,
                          dockerfile_name=own_dockerfile or "Dockerfile", build_files=build_files,
                          release=release, notes=tuple(notes))


def _truthy(value: str, key: str) -> bool:
    lower = str(value).strip().lower()
    if lower in ("y", "yes", "t", "true", "on", "1"):
        return True
    if lower in ("n", "no", "f", "false", "off", "0", ""):
        return False
    raise ValidationError(f"{key} = {value!r} is neither true nor false.", f"Set {key} to true or false.",
                          code="invalid.config.boolean")


# --------------------------------------------------------------------------- the image

GENERATED = "generated"  # dockerfile= value: labdeploy's Dockerfile even when the folder has one
# Where the image's constraints travel in the build context, and where the image keeps them.
CONSTRAINTS_IN_CONTEXT = ".labdeploy/constraints.txt"
CONSTRAINTS_IN_IMAGE = "/opt/labdeploy/constraints.txt"
PREPARE_SCRIPT = "prepare_docker_image.sh"  # PsyNet's hook for the experiment's own build steps

# Instructions of PsyNet's stock Dockerfiles (psynet/resources/experiment_scripts/Dockerfile,
# the demos' copies, PsyNet 10 to 13), compared with runs of whitespace made single spaces.
_STOCK_INSTRUCTIONS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"FROM registry\.gitlab\.com/psynetdev/psynet[:@]\S+",
    r"FROM python:3\.\d+(?:\.\d+)?(?:-\S+)?",
    r"RUN mkdir (?:-p )?/experiment",
    r"WORKDIR /(?:experiment)?",
    r"COPY requirements\.txt (?:\./)?requirements\.txt",
    r"COPY \*constraints\.txt (?:\./)?constraints\.txt",
    r"COPY \*prepare_docker_image\.sh (?:\./)?prepare_docker_image\.sh",
    r"COPY \. /experiment/?",
    r'ENV (?:SKIP_DEPENDENCY_CHECK=""|DALLINGER_NO_EGG_BUILD=1|PORT=5000)',
    r"ARG (?:PSYNET_DEVELOPER_MODE|REMOTE_DEBUGGER_PORT)",
    r"EXPOSE \$REMOTE_DEBUGGER_PORT",
    r'CMD (?:dallinger_heroku_web|\["dallinger_heroku_web"\])',
    r"RUN (?:SKIP_CHECK_PSYNET_VERSION_REQUIREMENT=1 )?psynet check-constraints",
    r"RUN (?:python3? -m )?pip uninstall -y (?:psynet|dallinger)",
    r"RUN (?:python3? -m )?pip install (?:uv|pydevd-pycharm\S*)",
    r"RUN (?:python3? -m pip|uv pip) install -r (?:constraints|requirements)\.txt(?: --system)?",
    r"RUN if \[ -f constraints\.txt \]; then .* fi",
    r"RUN if test -f prepare_docker_image\.sh ?; then bash prepare_docker_image\.sh ?; fi",
    r'RUN if \[\[ "\$PSYNET_DEVELOPER_MODE" = 1 \]\] ?; then .* fi',
    r"RUN apt-get update && apt-get install -y nodejs npm",
    r"RUN curl https://cli-assets\.heroku\.com/install\.sh \| sh",
))
_PSYNET_IMAGE = re.compile(r"FROM registry\.gitlab\.com/psynetdev/psynet[:@]\S+", re.IGNORECASE)
# Lines only PsyNet's template has: a plain `FROM python` Dockerfile is not taken for it.
_PSYNET_MARKS = ("prepare_docker_image.sh", "DALLINGER_NO_EGG_BUILD", "psynet check-constraints")


@dataclass(frozen=True)
class StockTemplate:
    """A Dockerfile recognised as PsyNet's stock template."""

    base: str                   # its FROM image
    own_steps: tuple[str, ...]  # instructions that are not the template's (not carried over)


def dockerfile_instructions(text: str) -> list[str]:
    """The instructions of a Dockerfile: continuations joined, comments and directives dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(re.sub(r"\s+", " ", (buf + line)).strip())
        buf = ""
    if buf.strip():
        out.append(re.sub(r"\s+", " ", buf).strip())
    return out


def stock_template(text: str) -> Optional[StockTemplate]:
    """PsyNet's stock Dockerfile, or None for any other.

    Two generations: up to PsyNet 13.0 `FROM registry.gitlab.com/psynetdev/psynet:<tag>` (an
    image that can't be pulled from most places, and that PsyNet 13.1+ itself refuses), always
    recognised, own steps listed; from 13.1 `FROM python:3.13-bookworm` with uv and the Heroku
    CLI, recognised only when it has nothing of the author's own. Neither adds Dallinger's
    frontend files, which PsyNet's own deploy bundles before building, so neither makes a
    working image from the folder alone.
    """
    steps = dockerfile_instructions(text)
    froms = [i for i in steps if i.upper().startswith("FROM ")]
    if not froms:
        return None
    own = tuple(i for i in steps if not any(p.fullmatch(i) for p in _STOCK_INSTRUCTIONS))
    base = froms[0].split()[1]
    if _PSYNET_IMAGE.fullmatch(froms[0]):
        return StockTemplate(base, own)
    if not own and len(froms) == 1 and any(mark in text for mark in _PSYNET_MARKS):
        return StockTemplate(base, ())
    return None


def choose_dockerfile(folder: ExperimentFolder, dockerfile: str = "Dockerfile") -> tuple[Optional[str], list[Note]]:
    """(the folder's Dockerfile to build, or None for a generated one; notes saying why)."""
    from .folder import DockerfileMissing, relative_name

    if dockerfile == GENERATED:
        why = "labdeploy's generated Dockerfile is used, as asked"
        return None, [Note("info", why + (" (the folder's own Dockerfile is not used)." if folder.has_dockerfile
                                          else "."))]
    name = relative_name(dockerfile, "Dockerfile name")
    path = folder.path / name
    if not path.is_file():
        if name == "Dockerfile":
            return None, [Note("info", "The folder has no Dockerfile: labdeploy's generated Dockerfile is used.")]
        raise DockerfileMissing(f"There is no {name} in {folder.path}.",
                                "Give the name of a Dockerfile in the experiment folder, or 'generated' for "
                                "labdeploy's own.")
    stock = stock_template(path.read_text(errors="replace"))
    if stock is None:
        return name, [Note("info", f"The folder's own {name} is used.")]
    notes = [Note("info", f"{name} is PsyNet's stock template (FROM {stock.base}): labdeploy's generated "
                          "Dockerfile is used instead (the same packages, at the versions the Dallinger release "
                          f"was tested with; it runs the folder's {PREPARE_SCRIPT}, if any, as PsyNet's does).")]
    if stock.own_steps:
        notes.append(Note("warning", f"{name} has steps of its own that the generated Dockerfile does not run: "
                                     + "; ".join(stock.own_steps),
                          f"Move them into {PREPARE_SCRIPT} (the generated Dockerfile runs it, as PsyNet's does), "
                          f"or give the folder a Dockerfile of your own that builds here."))
    return None, notes


def image_constraints(folder: ExperimentFolder) -> tuple[dallingerrelease.Choice, dict[str, str], list[Note]]:
    """The Dallinger/PsyNet release of a generated image and its one constraints file (as
    build context files): the release's published constraints, the experiment's own
    sanitised, requirements.txt winning over both."""
    from . import constraintsfile

    own_path = folder.path / "constraints.txt"
    own = own_path.read_text(errors="replace") if own_path.is_file() else None
    choice = dallingerrelease.choose(folder.kind, folder.requirements, own)
    published = dallingerrelease.release_constraints(choice.dallinger)
    notes = list(choice.notes)
    if published.text is None:
        notes.append(Note("warning", f"Dallinger {choice.dallinger} publishes no constraints.txt ({published.source}); "
                                     "the image pins only what the experiment's files pin.",
                          "Pin a newer Dallinger release in requirements.txt for a tested set of packages."))
    merged = constraintsfile.merge(pinned=choice.pins, release_label=published.label, release_text=published.text,
                                   release_source=published.source, experiment_text=own,
                                   requirement_lines=folder.requirements, already_said=choice.reported)
    notes += merged.notes
    if published.python:
        notes.append(Note("info", f"Dallinger {choice.dallinger}'s tested versions were compiled for Python "
                                  f"{published.python}; the base image's Python should match."))
    return choice, {CONSTRAINTS_IN_CONTEXT: merged.text}, notes


def dockerfile_for(folder: ExperimentFolder, release: dallingerrelease.Choice, *,
                   base_image: Optional[str] = None) -> str:
    """labdeploy's Dockerfile for a Dallinger/PsyNet folder: a Python base, the Dallinger (and
    PsyNet) release in `release` with the tested versions of everything else (the constraints
    file in the context), the requirements, PsyNet's prepare_docker_image.sh if any, the folder,
    Dallinger's frontend files."""
    base = base_image or DEFAULT_PYTHON_BASE
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", base):
        raise ValidationError(f"The base image {base!r} is not a valid image name.",
                              "Use an image reference such as 'python:3.11-slim'.", code="invalid.image_name")
    pins = release.pins
    wanted = " ".join(f'"{name}=={version}"' for name, version in pins.items())
    installed = " and ".join(f"m.version({name!r}) == {version!r}" for name, version in pins.items()) or "False"
    check = f"import importlib.metadata as m, sys; sys.exit(not ({installed}))"
    constrain = f"-c {CONSTRAINTS_IN_IMAGE}"
    lines = [
        f"# Generated by labdeploy for the {folder.kind} experiment {folder.path.name!r}.",
        "# The base can be changed without editing this file: --build-arg BASE_IMAGE=...",
        f"ARG BASE_IMAGE={base}",
        "FROM ${BASE_IMAGE}",
        "ENV PORT=5000 HOME=/tmp PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive",
        f"# Dallinger {release.dallinger} ({release.why}) with the versions that release was tested with;",
        "# the experiment's own constraints.txt adds the rest (labdeploy.constraintsfile).",
        f"COPY {CONSTRAINTS_IN_CONTEXT} {CONSTRAINTS_IN_IMAGE}",
        "# pip builds psycopg2 from source, which needs the PostgreSQL headers and a compiler, unless",
        "# the base already has these releases. pip then only aligns what differs from the constraints.",
        f"RUN if ! python3 -c \"{check}\" 2>/dev/null; then \\",
        "      apt-get update && apt-get install -y --no-install-recommends libpq-dev gcc python3-dev \\",
        "      && rm -rf /var/lib/apt/lists/*; fi" + (f" \\\n && python3 -m pip install --no-cache-dir {constrain} {wanted}"
                                                      if wanted else ""),
        "WORKDIR /experiment",
    ]
    if any("git+" in line for line in folder.requirements):
        # Requirements from git repositories need git (Dallinger's own image build does the same).
        lines.append("RUN apt-get update && apt-get install -y --no-install-recommends git openssh-client "
                     "&& rm -rf /var/lib/apt/lists/*")
    if folder.requirements:
        lines += ["COPY requirements.txt /experiment/requirements.txt",
                  f"RUN python3 -m pip install --no-cache-dir {constrain} -r requirements.txt"]
    if (folder.path / PREPARE_SCRIPT).is_file():
        # PsyNet's stock Dockerfile runs this hook for the experiment's own build steps.
        lines += [f"COPY {PREPARE_SCRIPT} /experiment/{PREPARE_SCRIPT}", f"RUN bash {PREPARE_SCRIPT}"]
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

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise LabdeployError(f"The build folder {dest} is not empty.", "Give an empty or new folder.",
                             code="build.folder_not_empty")
    src = folder.local_folder(experiment_spec.folder.path).resolve()
    _copy_tree(src, dest)
    _write_filtered_config(src / CONFIG_FILE, _replaceable(dest / CONFIG_FILE))
    if experiment_spec.dockerfile is not None:
        _replaceable(dest / "Dockerfile").write_text(experiment_spec.dockerfile)
    for rel, text in sorted(experiment_spec.build_files.items()):
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        _replaceable(out).write_text(text)
    _keep_in_context(dest, sorted(experiment_spec.build_files))
    return dest


def _keep_in_context(dest: Path, rels: list[str]) -> None:
    """The files labdeploy adds must reach Docker even when the folder's .dockerignore leaves
    out what they match (`.*`, say): an exception for each goes at the end of the copy's rules."""

    rules = folder.read_ignore_rules(dest)
    missing = [rel for rel in rels if rules.excluded(rel)]
    if missing:
        ignore = _replaceable(dest / ".dockerignore")
        text = ignore.read_text() if ignore.exists() else ""
        ignore.write_text(text + ("" if text.endswith("\n") or not text else "\n")
                          + "".join(f"!{rel}\n" for rel in missing))


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy the experiment folder without following any link (shutil.copytree would copy what
    a link points to, wherever that is). Links inside the folder are copied as links, as
    Docker sends them; a link out of it is refused, unless .dockerignore leaves it out
    anyway. Everything is checked before the first file is copied."""

    rules = folder.read_ignore_rules(src)
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
                plan.append(("link", rel, folder.link_target(src, rel)))
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

def prepare_psynet(context_dir, *, app: str, server_host: str, postgres_image: str, redis_image: str,
                   env: Optional[Mapping[str, str]] = None, build_args: Optional[Mapping[str, str]] = None,
                   ssh_user: str = "", folder_name: Optional[str] = None, dockerfile: str = "Dockerfile",
                   reporter=None) -> list[str]:
    """PsyNet's `psynet prepare` for the build context, run locally in throwaway containers
    (labdeploy.psynetprepare); returns the names it added to the context."""
    from . import psynetprepare

    return psynetprepare.prepare(context_dir, app=app, server_host=server_host, postgres_image=postgres_image,
                                 redis_image=redis_image, env=env, build_args=build_args, ssh_user=ssh_user,
                                 folder_name=folder_name, dockerfile=dockerfile, reporter=reporter)


def remove_prepare_image(app: str) -> bool:
    """Remove the app's PsyNet preparation image from this computer (destroy calls this);
    True when there was one."""
    from . import psynetprepare

    return psynetprepare.remove_image(app)


def check_git_sources(experiment_spec: ExperimentSpec, *, mode: str, remote=None) -> None:
    """Before building: refuse when requirements.txt installs from a git host that the machine
    building the image can't reach. The generated Dockerfile installs requirements.txt, so its
    git lines are checked from this computer (ssh-copy, registry, and PsyNet's preparation,
    which builds here) and from the server (server-build, over `remote`)."""
    from . import gitsources

    if experiment_spec.dockerfile is None:
        return  # the folder's own Dockerfile: whether it installs requirements.txt is its business
    here = mode != "server-build" or experiment_spec.kind == "psynet"
    on_server = remote if mode == "server-build" else None
    gitsources.check(experiment_spec.folder.requirements, here=here, remote=on_server,
                     server_label=getattr(remote, "label", None) or "the server")
