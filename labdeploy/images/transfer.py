"""Getting the experiment image onto the server, in one of three modes chosen per deploy.

* "server-build": the server keeps a copy of the build context (``dallinger/.build/<app>/
  context``); only files whose hash differs travel over the existing SSH connection (a
  gzipped tar on the channel's stdin), then the server runs ``docker build``. A one-line
  code change sends one file. An interrupted send resumes: the next run re-hashes the
  server's copy and sends only what is still missing or different.
* "ssh-copy": build here, then stream ``docker save`` into the server's ``docker load``
  over SSH, leaving out every layer the server already has. ``docker load`` only opens a
  layer's file when no layer with that chain ID exists, so a save archive filtered to the
  missing layers loads (checked on the testbed, Docker 20.10). An interrupted copy leaves
  nothing behind on the server (load registers layers only after reading the whole
  stream), so a retry starts over cleanly.
* "registry": the seed's way — build here, push to the registry, pull on the server by
  digest (see labdeploy.registry).

The image is tagged ``<docker_image_base_name>/<app>:<content tag>`` in every mode, so
the same content has the same name everywhere and "is the server current?" is one lookup.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from ..experiment import folder
from ..experiment import dallingerconfig
from . import build
from . import localdocker
from . import registry
from ..server import layout
from ..commands import files, images as image_commands
from .. import names
from ..errors import CommandFailed, LabdeployError, Remedy, ValidationError
from .build import BuildLog, disk_full_error, image_ref
from ..errors import is_disk_full
from ..experiment.folder import content_tag, scan_context
from ..progress import LogLine, Progress, Reporter, null_reporter, step

MODES = ("server-build", "ssh-copy", "registry")
MODE_HELP = {
    "server-build": "Build on the server: only changed files travel over SSH; no registry and no Docker "
                    "needed on this computer.",
    "ssh-copy": "Build here, copy the image over SSH: only layers the server lacks travel; no registry needed "
                "(needs Docker on this computer).",
    "registry": "The seed's way: build here, push to your registry, the server pulls it (needs Docker on this "
                "computer and a registry login on both machines).",
}


@dataclass(frozen=True)
class DeliveredImage:
    ref: str        # e.g. "labdeploy/stroop:3f2a9c0d1e2b4a5c", present on the server afterwards
    image_id: str   # the server engine's image ID ("sha256:...")
    tag: str        # the content tag
    mode: str = "server-build"
    digest: Optional[str] = None  # registry digest (registry mode only)
    reused: bool = False          # True when the server already had it


build_dir = layout.build_dir  # kept importable here: transfer is where build contexts are made


def context_dir(app: str) -> str:
    return f"{build_dir(app)}/context"


def resolve_base_name(base_name: Optional[str]) -> str:
    """The explicit name, else ~/.dallingerconfig's docker_image_base_name, else 'labdeploy'."""
    name = base_name or dallingerconfig.get_base_name() or build.DEFAULT_BASE_NAME
    return names.image_repository(name)


# --------------------------------------------------------------------------- helpers

class _ProgressReader(io.RawIOBase):
    """A file wrapper that reports how many bytes were read (= sent over the channel)."""

    def __init__(self, f, total: int, reporter: Reporter, step_name: str, item: str = "") -> None:
        self.f, self.total, self.reporter, self.step_name, self.item = f, total, reporter, step_name, item
        self.done = 0
        self._last = -1

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.done += len(data)
        # Every ~256 KB and at the end: enough for a progress bar, cheap for the reporter.
        if self.done - self._last >= 262144 or (not data and self._last != self.done):
            self._last = self.done
            self.reporter(Progress(self.step_name, self.done, self.total, item=self.item))
        return data


def server_image_id(remote, ref: str) -> Optional[str]:
    """The server engine's ID of `ref`, or None when it lacks it. Docker itself missing raises."""
    res = remote.run(image_commands.image_id(ref), check=False)
    if res.ok and res.stdout.strip():
        return res.stdout.strip()
    problem = build.server_docker_error(remote, res.exit_status, res.stderr)
    if problem is not None:
        raise problem
    return None


def _remote_failure(exc: CommandFailed, what: str) -> LabdeployError:
    text = (exc.stderr or "") + (exc.stdout or "")
    if is_disk_full(text):
        return disk_full_error("server", text)
    return exc


# --------------------------------------------------------------------------- server-build

def remote_manifest(remote, app: str) -> dict:
    """path -> (sha256, executable) for files, ("link", target) for links, of the server's copy
    of the build context. Nothing is followed through a link."""
    return files.read_manifest(remote.run(files.manifest(context_dir(app)), timeout=600).stdout)


@dataclass
class SyncPlan:
    send: list = field(default_factory=list)
    delete: list = field(default_factory=list)
    send_bytes: int = 0
    # Sent paths the server has as a link, or that become one: removed before the tar is
    # unpacked, so no tar ever writes through a link it finds on the server.
    replace: list = field(default_factory=list)


def plan_sync(local: folder.BuildContext, remote_files: dict) -> SyncPlan:
    """Which files to send (new or changed content / executable bit / link target) and which to delete."""
    wanted = local.manifest()
    plan = SyncPlan()
    for rel, entry in wanted.items():
        have = remote_files.get(rel)
        if have != entry:
            plan.send.append(rel)
            plan.send_bytes += local.files[rel].size
            if have is not None and "link" in (have[0], entry[0]):
                plan.replace.append(rel)
    plan.delete = sorted(set(remote_files) - set(wanted))
    plan.send.sort()
    plan.replace.sort()
    return plan


def sync_context(remote, context: folder.BuildContext, app: str, reporter: Optional[Reporter] = None,
                 manifest: Optional[dict] = None) -> SyncPlan:
    """Make the server's copy of the build context equal to `context`, sending only differences.
    `manifest`: the server copy's remote_manifest() when already read."""
    reporter = reporter or null_reporter
    with step(reporter, "compare files", f"{len(context.files)} files here"):
        plan = plan_sync(context, manifest if manifest is not None else remote_manifest(remote, app))
    ctx = context_dir(app)
    with step(reporter, "send changed files", f"{len(plan.send)} changed, {len(plan.delete)} removed"):
        # Deletions first, so a file that became a folder (or the reverse) does not block tar.
        if plan.delete or plan.replace:
            listing = b"\0".join(p.encode() for p in plan.delete + plan.replace) + b"\0"
            remote.run(files.delete_listed(ctx), stdin=listing, timeout=600)
        if plan.send:
            # Spooled to a temporary file, not memory: a first sync may carry large assets.
            with tempfile.TemporaryFile(prefix="labdeploy-context-") as spool:
                context.write_tar(spool, plan.send)
                size = spool.tell()
                spool.seek(0)
                reader = _ProgressReader(spool, size, reporter, "send changed files")
                # --no-same-owner/-p: the files get the login user as owner and our modes.
                remote.run(files.unpack(ctx), stdin=reader, timeout=3600)
        for rel in plan.send:
            reporter(LogLine(f"sent {rel}", "transfer"))
    return plan


def docker_build_argv(ref: str, app: str, tag: str, dockerfile: str, build_args: Optional[dict]) -> list[str]:
    argv = ["docker", "build", "--pull=false", "-t", build.image_reference(ref), "-f", dockerfile,
            "--label", f"{build.LABEL_APP}={names.app_name(app)}", "--label",
            f"{build.LABEL_CONTENT}={names.image_tag(tag)}"]
    for key, value in sorted(folder.check_build_args(build_args).items()):
        argv += ["--build-arg", f"{key}={value}"]
    return argv + ["."]


def build_on_server(remote, context: folder.BuildContext, *, app: str, ref: str, tag: str,
                    build_args: Optional[dict], reporter: Optional[Reporter] = None) -> str:
    """`docker build` in the server's copy of the context; returns the image ID."""
    reporter = reporter or null_reporter
    log = BuildLog(reporter)
    # Build and read the new image's ID in one round trip.
    argv = image_commands.build(ref, docker_build_argv(ref, app, tag, context.dockerfile, build_args))
    found = []

    def on_line(line: str, _stream: str) -> None:
        image_id = image_commands.image_id_in(line)
        if image_id is None:
            log.line(line)
        else:
            found.append(image_id)

    with step(reporter, "build image", f"on the server: {ref}"):
        try:
            remote.run(argv, cwd=context_dir(app), timeout=7200, on_line=on_line)
        except CommandFailed as exc:
            raise log.failure((exc.stderr or "").strip().splitlines()[-1] if exc.stderr.strip() else "",
                              "server") from None
        image_id = found[-1] if found else ""
        if not image_id:
            raise log.failure("the build ended without producing an image", "server")
        return image_id


def _deliver_server_build(remote, context, *, app, ref, tag, build_args, reporter, manifest=None) -> DeliveredImage:
    sync_context(remote, context, app, reporter, manifest=manifest)
    image_id = build_on_server(remote, context, app=app, ref=ref, tag=tag, build_args=build_args, reporter=reporter)
    return DeliveredImage(ref, image_id, tag, "server-build")


# --------------------------------------------------------------------------- ssh-copy

def server_chain_ids(remote) -> set:
    """Chain IDs of every layer stack the server's images use (so we know what it already has)."""
    have: set = set()
    for layers in image_commands.read_layers(remote.run(image_commands.layers(), timeout=300).stdout):
        have.update(build.chain_ids(layers))
    return have


def filtered_save(client, ref: str, have: set, out_path: str, reporter: Reporter) -> tuple[int, int]:
    """Write a gzipped `docker save` of `ref` without the layers whose chain ID the server has.

    Returns (layers kept, layers total).
    """
    try:
        return _filtered_save(client, ref, have, out_path, reporter)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full_error("local machine", str(exc)) from exc
        raise


def _filtered_save(client, ref: str, have: set, out_path: str, reporter: Reporter) -> tuple[int, int]:
    with tempfile.TemporaryDirectory(prefix="labdeploy-save-") as tmp:
        full = os.path.join(tmp, "image.tar")
        with step(reporter, "export image", ref):
            done = 0
            with open(full, "wb") as f:
                for chunk in client.api.get_image(ref, chunk_size=1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    reporter(Progress("export image", done, None))
        with tarfile.open(full) as src:
            manifest = json.load(src.extractfile("manifest.json"))
            entry = manifest[0]
            config = json.load(src.extractfile(entry["Config"]))
            diffs = config["rootfs"]["diff_ids"]
            chains = build.chain_ids(diffs)
            skip = {path for path, chain in zip(entry["Layers"], chains) if chain in have}
            entry["RepoTags"] = [ref]
            with gzip.open(out_path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as dst:
                for member in src:
                    if member.name in skip or member.name == "repositories":
                        continue
                    if member.name == "manifest.json":
                        data = json.dumps(manifest).encode()
                        ti = tarfile.TarInfo("manifest.json")
                        ti.size = len(data)
                        dst.addfile(ti, io.BytesIO(data))
                    elif member.isfile():
                        dst.addfile(member, src.extractfile(member))
                    else:
                        dst.addfile(member)
        return len(entry["Layers"]) - len(skip), len(entry["Layers"])


def _load_on_server(remote, path: str, reporter: Reporter, item: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        reader = _ProgressReader(f, size, reporter, "copy image", item)
        try:
            remote.run(image_commands.load(), stdin=reader, timeout=7200,
                       on_line=lambda line, _s: reporter(LogLine(line, "load")))
        except CommandFailed as exc:
            raise _remote_failure(exc, "docker load") from None


def _deliver_ssh_copy(remote, context, *, app, ref, tag, build_args, base_name, reporter) -> DeliveredImage:
    client = build.docker_client()
    built = build.build_local(context.root, app=app, base_name=base_name, build_args=build_args,
                               reporter=reporter, client=client, context=context)
    existing = server_image_id(remote, ref)
    if existing == built.image_id:
        return DeliveredImage(ref, existing, tag, "ssh-copy", reused=True)
    with step(reporter, "copy image", "only the layers the server lacks"):
        have = server_chain_ids(remote)
        with tempfile.TemporaryDirectory(prefix="labdeploy-copy-") as tmp:
            path = os.path.join(tmp, "image.tar.gz")
            kept, total = filtered_save(client, ref, have, path, reporter)
            reporter(LogLine(f"sending {kept} of {total} layers ({os.path.getsize(path)} bytes compressed)",
                             "transfer"))
            try:
                _load_on_server(remote, path, reporter, f"{kept}/{total} layers")
            except CommandFailed as exc:
                # The partial archive was refused: a layer vanished on the server meanwhile (someone
                # pruned), or its `docker load` wants every layer (containerd image store). Look
                # again and send what is missing now; if that is refused too, the whole image.
                if kept == total:
                    raise
                reporter(LogLine(f"the server refused the partial image ({exc.stderr.strip()[-200:]}); "
                                 "checking its layers again", "transfer"))
                kept, total = filtered_save(client, ref, server_chain_ids(remote), path, reporter)
                try:
                    _load_on_server(remote, path, reporter, f"{kept}/{total} layers")
                except CommandFailed:
                    if kept == total:
                        raise
                    reporter(LogLine("refused again; sending the whole image", "transfer"))
                    filtered_save(client, ref, set(), path, reporter)
                    _load_on_server(remote, path, reporter, "all layers")
    image_id = server_image_id(remote, ref)
    if image_id != built.image_id:
        raise LabdeployError(f"After the copy the server's {ref} is {image_id}, not {built.image_id}.",
                             "Try again; if it persists, use the 'server-build' mode.", code="transfer.copy_mismatch")
    return DeliveredImage(ref, image_id, tag, "ssh-copy")


# --------------------------------------------------------------------------- entry point

def deliver(remote, experiment_dir, *, app: str, mode: str = "server-build", build_args: Optional[dict] = None,
            base_name: Optional[str] = None, reporter: Optional[Reporter] = None, dockerfile: str = "Dockerfile",
            credentials=None, logout_after_pull: bool = False) -> DeliveredImage:
    """Get the experiment's image onto the server; afterwards the server's engine has `ref`.

    `credentials` (a `labdeploy.images.registry.Credentials`) are only used by mode "registry": the
    server logs in with them (password on stdin) before pulling, and logs out after the pull
    when `logout_after_pull` is true.
    """
    reporter = reporter or null_reporter
    names.app_name(app)
    if mode not in MODES:
        raise ValidationError(f"Unknown transfer mode {mode!r}.",
                              "Choose one of: " + "; ".join(f"'{m}' — {MODE_HELP[m]}" for m in MODES),
                              code="invalid.transfer_mode")
    build_args = folder.check_build_args(build_args)
    localdocker.require(mode)  # ssh-copy and registry build here: refused before the server is asked anything
    base = resolve_base_name(base_name)
    # Every file is checked here, links that leave the folder refused, before anything is sent.
    context = scan_context(experiment_dir, dockerfile)
    tag = content_tag(context, build_args)
    ref = image_ref(base, app, tag)
    manifest = None
    with step(reporter, "check server image", ref):
        if mode == "server-build":
            # The server's copy of the context is listed meanwhile (both only read): one round
            # trip of waiting instead of two when the image has to be built.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labdeploy-manifest") as pool:
                listing = pool.submit(remote_manifest, remote, app)
                existing = server_image_id(remote, ref)
                manifest = None if existing else listing.result()
        else:
            existing = server_image_id(remote, ref)
    if existing:
        reporter(LogLine(f"the server already has {ref} (same content); nothing to send", "transfer"))
        return DeliveredImage(ref, existing, tag, mode, reused=True)
    if mode == "server-build":
        return _deliver_server_build(remote, context, app=app, ref=ref, tag=tag, build_args=build_args,
                                     reporter=reporter, manifest=manifest)
    if mode == "ssh-copy":
        return _deliver_ssh_copy(remote, context, app=app, ref=ref, tag=tag, build_args=build_args,
                                 base_name=base, reporter=reporter)
    return deliver_via_registry(remote, context, app=app, ref=ref, tag=tag, build_args=build_args,
                                base_name=base, reporter=reporter, credentials=credentials,
                                logout_after_pull=logout_after_pull)


def forget_build_context(remote, app: str, *, confirm: bool = False) -> bool:
    """Delete the server's copy of the app's build context (the next server-build sends everything)."""
    if not confirm:
        raise ValidationError(f"Deleting the server's build files of {app!r} needs confirmation.",
                              code="confirmation.required", remedy=Remedy("confirm", call="forget_build_context"))
    remote.run(files.remove(build_dir(app)))
    return True


# --------------------------------------------------------------------------- status

@dataclass
class ServerImageStatus:
    """Which images of the app the server has, and whether one matches the experiment as it is now."""

    app: str
    expected_ref: str        # the ref the current local content would get
    present: bool            # the server has expected_ref: no transfer is needed
    deployed_ref: Optional[str]  # the image in the app's deploy.json, if it was deployed
    images: "object"         # pandas DataFrame: ref, tag, image_id, created, size, current, deployed

    @property
    def current(self) -> bool:
        """The server has the image for the experiment's current content."""
        return self.present

    @property
    def deployed_current(self) -> Optional[bool]:
        """Whether the running deploy uses the current content (None when never deployed)."""
        return None if self.deployed_ref is None else self.deployed_ref == self.expected_ref

    def summary(self) -> str:
        if self.present and self.deployed_current:
            return f"The server has and runs the current image {self.expected_ref}."
        if self.present:
            return f"The server has the current image {self.expected_ref}" + (
                f" but the app runs {self.deployed_ref}." if self.deployed_ref else " (not deployed yet).")
        return f"The server does not have {self.expected_ref} yet: the experiment changed since its last image."


def server_image_status(remote, experiment_dir, *, app: str, base_name: Optional[str] = None,
                        build_args: Optional[dict] = None, dockerfile: str = "Dockerfile") -> ServerImageStatus:
    """Answer "which image does the server have for this experiment, and is it current?"."""
    import pandas as pd

    names.app_name(app)
    context = scan_context(experiment_dir, dockerfile)
    tag = content_tag(context, folder.check_build_args(build_args))
    expected = image_ref(resolve_base_name(base_name), app, tag)
    deployed = None
    state = layout.app_state(app)
    if remote.exists(state):
        try:
            deployed = json.loads(remote.get_bytes(state)).get("image")
        except ValueError:
            deployed = None
    rows = []
    for item in image_commands.read_app_images(remote.run(image_commands.app_images(app)).stdout):
        ref = f"{item.get('Repository')}:{item.get('Tag')}"
        rows.append({"ref": ref, "tag": item.get("Tag"), "image_id": item.get("ID"),
                     "created": item.get("CreatedAt"), "size": item.get("Size"),
                     "current": ref == expected, "deployed": ref == deployed})
    frame = pd.DataFrame(rows, columns=["ref", "tag", "image_id", "created", "size", "current", "deployed"])
    present = bool(server_image_id(remote, expected))
    return ServerImageStatus(app, expected, present, deployed, frame)


def deliver_via_registry(remote, context, *, app: str, ref: str, tag: str, build_args, base_name: str,
                         reporter: Optional[Reporter] = None, credentials: Optional["registry.Credentials"] = None,
                         logout_after_pull: bool = False):
    """The seed's route, done properly: build here, push, server pulls by digest."""
    reporter = reporter or null_reporter
    if build.registry_of(base_name) is None:
        raise ValidationError(
            f"The base image name {base_name!r} does not start with a registry, so the 'registry' mode can't "
            f"be used with it.",
            "Set docker_image_base_name to e.g. 'registry.gitlab.com/my-group/experiment-images', or choose the "
            "'server-build' or 'ssh-copy' mode, which need no registry.", code="invalid.image_name.no_registry")
    client = build.docker_client()
    build.build_local(context.root, app=app, base_name=base_name, build_args=build_args, reporter=reporter,
                       client=client, context=context)
    digest = registry.push(ref, reporter=reporter, client=client)
    # "Log out after the pull": the login lives in a private folder for this pull only, so the
    # server user's own ~/.docker never holds the password; the folder is deleted afterwards.
    private = f"{build_dir(app)}/registry-login" if credentials is not None and logout_after_pull else None
    if credentials is not None:
        registry.login_server(remote, credentials, docker_config=private, reporter=reporter, temporary=bool(private))
    try:
        repository = ref.rpartition(":")[0]
        image_id = registry.pull_on_server(remote, repository, digest, tag_as=ref, docker_config=private, reporter=reporter)
    finally:
        if private:
            registry.logout_server(remote, credentials.registry, docker_config=private)
            remote.run(files.remove(private), check=False)
    return DeliveredImage(ref, image_id, tag, "registry", digest=digest)
