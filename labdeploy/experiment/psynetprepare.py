"""PsyNet's preparation (`psynet prepare`), run on this computer before the image is built.

`psynet deploy ssh` prepares an experiment on the researcher's computer: it records the
deployment (.deploy/deployment_info.json), fills a throwaway database and saves it as
.deploy/database_template.zip, then bundles PsyNet's extra files. Here the same runs in
throwaway containers: the experiment's image built locally, next to a PostgreSQL and a Redis,
all removed afterwards. The image itself keeps a stable name per app
(`labdeploy-psynet-prepare/<app>:latest`, labelled with the app) so Docker's layer cache
spares the next deploy PsyNet's installation; `remove_image(app)` removes it, and destroy
calls that.

What PsyNet writes that does not belong to the deployed image is left out: `Dockertag` (the
image name of PsyNet's local Docker scripts, which `psynet prepare` rewrites to the name of
the folder it runs in) keeps the experiment's own.
"""

from __future__ import annotations

import os
import re
import secrets as _secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional

from ..errors import LabdeployError, ValidationError
from ..progress import LogLine, null_reporter

IMAGE_REPOSITORY = "labdeploy-psynet-prepare"
LABEL_APP = "labdeploy.app"
LABEL_PURPOSE = "labdeploy.purpose"
PURPOSE = "psynet-prepare"
# Written by `psynet prepare` but not the deployed experiment's: never copied back.
NOT_COPIED = frozenset({"__pycache__", "Dockertag"})

# `_prepare` is PsyNet's internal function (psynet.command_line, PsyNet 13): there is no public
# API for this step. PsyNet's git lookup is skipped: images have no git.
SCRIPT = r"""
import os, uuid
from psynet import deployment_info
deployment_info.write_all(dict(
    redeploying_from_archive=False, mode=os.environ.get("mode", "live"), is_local_deployment=False,
    is_ssh_deployment=True, server=os.environ["LABDEPLOY_SERVER"], app=os.environ["LABDEPLOY_APP"],
    # PsyNet's default label (dashboard, deployment id, export names) is the folder's name;
    # the image runs it in /experiment, so the researcher's folder name is passed in.
    folder_name=os.environ.get("LABDEPLOY_FOLDER_NAME") or os.path.basename(os.getcwd()),
    secret=uuid.uuid4(), origin=None,
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


class PrepareFailed(LabdeployError):
    """PsyNet's preparation failed; `stage` says where (build, services, prepare, copy)."""

    code = "psynet.prepare_failed"

    def __init__(self, message: str, hint: str = "", *, stage: str = "", output: str = "", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.stage = stage
        self.output = output


def image_name(app: str) -> str:
    from .. import names

    return f"{IMAGE_REPOSITORY}/{names.app_name(app)}:latest"


# --------------------------------------------------------------------------- why it failed

_PULL = re.compile(r"pull access denied|manifest unknown|manifest for \S+ not found|repository does not exist|"
                   r"unauthorized: |denied: requested access|toomanyrequests|error pulling image|"
                   r"unable to find image .* locally", re.IGNORECASE)
_REGISTRY_NET = re.compile(r'Get "?https?://[^"\s]+/v2/', re.IGNORECASE)
_PIP = re.compile(r"pip(3)? install|No matching distribution|ResolutionImpossible|Could not find a version|"
                  r"conflicting dependencies|Failed building wheel|error: subprocess-exited-with-error", re.IGNORECASE)
_NETWORK = re.compile(r"Temporary failure in name resolution|Name or service not known|no such host|"
                      r"Failed to establish a new connection|Could not fetch URL|Connection timed out|"
                      r"Network is unreachable|i/o timeout", re.IGNORECASE)
_NO_DAEMON = re.compile(r"Cannot connect to the Docker daemon|Is the docker daemon running", re.IGNORECASE)


def explain(stage: str, output: str, *, image: str = "", postgres_image: str = "",
            redis_image: str = "") -> tuple[str, str]:
    """(message, hint) for a failure at `stage`, matched to what the output says went wrong:
    a pull failure is not fixed by running `psynet prepare` locally."""
    from ..errors import is_disk_full

    tail = output.strip()[-3000:]
    if _NO_DAEMON.search(output):
        return ("PsyNet's preparation needs Docker on this computer, and its engine is not running.",
                "Start Docker here (`sudo systemctl start docker`, or Docker Desktop), then deploy again.")
    if is_disk_full(output):
        return (f"This computer ran out of disk space during PsyNet's preparation:\n{tail}",
                "Free space here (`docker image prune`, `docker builder prune`; `df -h` shows what is full), "
                "then deploy again.")
    if stage == "build":
        if _PULL.search(output) or (_REGISTRY_NET.search(output) and _NETWORK.search(output)):
            base = _from_image(output) or "the Dockerfile's base image"
            return (f"PsyNet's preparation builds the image on this computer, and the base image {base} could "
                    f"not be pulled here:\n{tail}",
                    f"Make {base} available on this computer (`docker login` to its registry, then "
                    f"`docker pull {base}`), or build from a base this computer has (--build-arg "
                    "BASE_IMAGE=..., or dockerfile='generated'). Running `psynet prepare` would not help: the "
                    "experiment never ran.")
        if _NETWORK.search(output):
            return (f"Building the image on this computer for PsyNet's preparation needed the network, and it "
                    f"failed:\n{tail}",
                    "Check this computer's internet connection (PyPI, Debian's mirror, and any git host in "
                    "requirements.txt must be reachable while building), then deploy again.")
        if _PIP.search(output):
            return (f"Installing the experiment's Python packages failed while building the image on this "
                    f"computer:\n{tail}",
                    "Read pip's message above: usually a version in requirements.txt that doesn't exist or "
                    "conflicts with the Dallinger/PsyNet release in use. Fix requirements.txt and deploy again.")
        return (f"Building the image on this computer for PsyNet's preparation failed:\n{tail}",
                "Read the build output above: the same Dockerfile builds the image on the server, so fix it "
                "first (`docker build .` in the experiment folder reproduces it).")
    if stage == "services":
        which = " or ".join(i for i in (postgres_image, redis_image) if i)
        if _PULL.search(output) or _NETWORK.search(output):
            return (f"PsyNet's preparation runs a throwaway PostgreSQL and Redis on this computer, and their "
                    f"image ({which}) is not here and could not be pulled:\n{tail}",
                    f"Pull them here (`docker pull {postgres_image}`, `docker pull {redis_image}`), or deploy "
                    "with images this computer has (redis_image=..., the stack's PostgreSQL image).")
        return (f"The throwaway PostgreSQL/Redis for PsyNet's preparation did not start:\n{tail}",
                "Read the output above; `docker ps -a` shows what is left. Then deploy again.")
    if stage == "prepare":
        return (f"PsyNet's preparation failed:\n{tail}",
                "Read the traceback above: it comes from the experiment's code or PsyNet. `psynet prepare` in "
                "the experiment folder reproduces it with a local database.")
    return (f"PsyNet's preparation failed while copying its results ({stage}):\n{tail}",
            "Deploy again; if it persists, check free disk space and that Docker works here (`docker ps`).")


def _from_image(output: str) -> Optional[str]:
    m = re.search(r"Step \d+/\d+ : FROM (\S+)", output) or re.search(
        r"(?:pull access denied for|manifest for|Unable to find image ')\s*([^\s,']+)", output, re.IGNORECASE)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- running it

def prepare(context_dir, *, app: str, server_host: str, postgres_image: str, redis_image: str,
            env: Optional[Mapping[str, str]] = None, build_args: Optional[Mapping[str, str]] = None,
            ssh_user: str = "", folder_name: Optional[str] = None, dockerfile: str = "Dockerfile",
            reporter=None) -> list[str]:
    """Run PsyNet's preparation for the build context in `context_dir` and add its results
    (.deploy/, source_code.zip, ...) to it. Needs Docker on this computer. `folder_name` is the
    experiment folder's real name (PsyNet's default label). Returns the names added."""
    from .. import names
    from .folder import relative_name

    names.app_name(app)
    names.host(server_host)
    names.image(postgres_image, "PostgreSQL image")
    names.image(redis_image, "Redis image")
    dockerfile = relative_name(dockerfile, "Dockerfile name")
    if folder_name is not None and (not folder_name or any(ord(c) < 32 or c == "\x7f" for c in folder_name)):
        raise ValidationError(f"The experiment folder name {folder_name!r} can't be recorded for PsyNet.",
                              "Rename the folder without line breaks or control characters.",
                              code="invalid.experiment.folder_name")
    run = _Preparation(Path(context_dir), app, postgres_image, redis_image, reporter or null_reporter)
    with tempfile.TemporaryDirectory(prefix="labdeploy-psynet-") as tmp:
        env_file = run.write_env(Path(tmp), {**(env or {}), "LABDEPLOY_APP": app, "LABDEPLOY_SERVER": server_host,
                                             "LABDEPLOY_SSH_USER": ssh_user, "LABDEPLOY_FOLDER_NAME": folder_name or ""})
        try:
            run.build(dockerfile, build_args or {})
            run.start_services(env_file)
            run.prepare(env_file)
            return run.copy_back()
        finally:
            run.clean_up()


class _Preparation:
    """One run of PsyNet's preparation: throwaway containers on a network of their own."""

    def __init__(self, ctx: Path, app: str, postgres_image: str, redis_image: str, report) -> None:
        self.ctx, self.app, self.report = ctx, app, report
        self.postgres_image, self.redis_image = postgres_image, redis_image
        self.image = image_name(app)
        tag = f"labdeploy-psynet-prepare-{app}-{_secrets.token_hex(3)}"
        self.net, self.pg, self.redis, self.prep = (f"{tag}-net", f"{tag}-pg", f"{tag}-redis", f"{tag}-run")

    def docker(self, *args: str, stage: str = "copy", check: bool = True,
               timeout: float = 1800) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise PrepareFailed("PsyNet's preparation needs Docker on this computer, and there is none.",
                                "Install Docker here (or deploy from a computer that has it).",
                                stage=stage) from None
        if check and res.returncode != 0:
            output = res.stdout + res.stderr
            message, hint = explain(stage, output, image=self.image, postgres_image=self.postgres_image,
                                    redis_image=self.redis_image)
            raise PrepareFailed(message, hint, stage=stage, output=output[-20000:])
        return res

    def write_env(self, tmp: Path, env: Mapping[str, str]) -> Path:
        """Secrets go to the containers through a 0600 file, not argv."""
        password = _secrets.token_urlsafe(16)
        values = {**env, "POSTGRES_USER": "dallinger", "POSTGRES_DB": "dallinger", "POSTGRES_PASSWORD": password,
                  "DATABASE_URL": f"postgresql://dallinger:{password}@{self.pg}:5432/dallinger",
                  "REDIS_URL": f"redis://{self.redis}:6379/0"}
        env_file = tmp / "env"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in values.items()))
        return env_file

    def build(self, dockerfile: str, build_args: Mapping[str, str]) -> None:
        self.report(LogLine("building the image locally for PsyNet's preparation", "psynet"))
        t0 = time.monotonic()
        before = self.docker("image", "inspect", "-f", "{{.Id}}", self.image, check=False).stdout.strip()
        _build(["docker", "build", "-t", self.image, "-f", str(self.ctx / dockerfile),
                "--label", f"{LABEL_APP}={self.app}", "--label", f"{LABEL_PURPOSE}={PURPOSE}",
                *[a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")], str(self.ctx)],
               self.report, image=self.image, postgres_image=self.postgres_image, redis_image=self.redis_image)
        self.report(LogLine(f"built {self.image} in {time.monotonic() - t0:.0f} s", "psynet"))
        after = self.docker("image", "inspect", "-f", "{{.Id}}", self.image, check=False).stdout.strip()
        if before and before != after:
            # The last deploy's image lost its name to this one: one image per app, not one per deploy.
            self.docker("image", "rm", before, check=False)

    def start_services(self, env_file: Path) -> None:
        self.docker("network", "create", self.net, stage="services")
        self.docker("run", "-d", "--name", self.pg, "--network", self.net, "--env-file", str(env_file),
                    self.postgres_image, stage="services")
        self.docker("run", "-d", "--name", self.redis, "--network", self.net, self.redis_image,
                    "redis-server", "--protected-mode", "no", stage="services")
        for _ in range(600):  # PostgreSQL's first start (initdb) takes a few seconds
            if self.docker("exec", self.pg, "pg_isready", "-U", "dallinger", check=False).returncode == 0:
                break
            time.sleep(0.5)

    def prepare(self, env_file: Path) -> None:
        self.report(LogLine("running PsyNet's preparation", "psynet"))
        res = self.docker("run", "--name", self.prep, "--network", self.net, "--env-file", str(env_file),
                          "-w", "/experiment", self.image, "python3", "-P", "-c", SCRIPT, check=False)
        for line in (res.stdout + res.stderr).splitlines()[-40:]:
            self.report(LogLine(line, "psynet"))
        if res.returncode != 0:
            message, hint = explain("prepare", res.stderr or res.stdout)
            raise PrepareFailed(message, hint, stage="prepare", output=(res.stdout + res.stderr)[-20000:])

    def copy_back(self) -> list[str]:
        """What the preparation added to /experiment, into the build context."""
        changed = self.docker("diff", self.prep).stdout.splitlines()
        added = sorted({line.split(" ", 1)[1].split("/")[2] for line in changed
                        if line[:1] in "AC" and line.split(" ", 1)[1].startswith("/experiment/")} - NOT_COPIED)
        for entry in added:
            target = self.ctx / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # else docker cp would nest the new folder inside the old
            elif target.exists() or target.is_symlink():
                target.unlink()
            self.docker("cp", f"{self.prep}:/experiment/{entry}", str(self.ctx / entry))
        self.report(LogLine(f"PsyNet prepared: {', '.join(added)}", "psynet"))
        return added

    def clean_up(self) -> None:
        for c in (self.prep, self.pg, self.redis):
            self.docker("rm", "-f", "-v", c, check=False)
        self.docker("network", "rm", self.net, check=False)


def _build(argv: list[str], report, **names_for_hints: str) -> None:
    """`docker build`, its steps shown as they start (a first build takes minutes); a failure
    raises PrepareFailed with the output's tail and a hint matched to it."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
    except FileNotFoundError:
        raise PrepareFailed("PsyNet's preparation needs Docker on this computer, and there is none.",
                            "Install Docker here (or deploy from a computer that has it).", stage="build") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-200:]
        if line.startswith("Step ") or line.startswith("#") and "] " in line:
            report(LogLine(line[:200], "psynet"))
    if proc.wait() != 0:
        output = "\n".join(tail)
        message, hint = explain("build", output, **names_for_hints)
        raise PrepareFailed(message, hint, stage="build", output=output)


def remove_image(app: str) -> bool:
    """Remove this app's preparation images from this computer (about 1.4 GB each with their
    base, the unique part 0.2 to 1 GB); True when one was removed. Only images labelled as this
    app's preparation, and the app's own image name (older labdeploy did not label it). No
    Docker here: nothing to remove."""
    image = image_name(app)

    def docker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)

    try:
        ids = docker("image", "ls", "-q", "--no-trunc", "--filter", f"label={LABEL_APP}={app}",
                     "--filter", f"label={LABEL_PURPOSE}={PURPOSE}").stdout.split()
        named = docker("image", "inspect", "--format",
                       "{{.Id}} {{ index .Config.Labels \"" + LABEL_APP + "\" }}", image)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    if named.returncode == 0:
        image_id, _, label = named.stdout.strip().partition(" ")
        if label in ("", "<no value>", app) and image_id not in ids:
            ids.append(image_id)  # unlabelled: made by an older labdeploy under this app's name
    removed = False
    for image_id in dict.fromkeys(ids):
        removed |= docker("image", "rm", image_id).returncode == 0
    if named.returncode == 0:
        docker("image", "rm", image)  # the name too, if the id was shared with another name
    return removed
