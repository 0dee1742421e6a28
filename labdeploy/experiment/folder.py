"""The experiment folder as Docker sees it: which files travel (.dockerignore), links that stay
inside it (and those refused), names the file system can hold, and the content tag.

Nothing here follows a link: links inside the folder are recorded as links (their target
text is part of the tag), links leading out of it are refused (LinkOutsideFolder), so no
file outside the folder can end up in an image.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ValidationError


TAG_LENGTH = 16


_BUILD_ARG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Linux (and macOS) limits: a longer name makes every file call fail with ENAMETOOLONG.
NAME_MAX = 255    # bytes in one path component


PATH_MAX = 4096   # bytes in a whole path, the final NUL included


class DockerfileMissing(ValidationError):
    """The experiment folder has no Dockerfile."""

    code = "invalid.experiment.dockerfile_missing"


class LinkOutsideFolder(ValidationError):
    """A symbolic link in the experiment folder points outside it: what it points to never travels."""

    code = "invalid.experiment.link_outside"

    def __init__(self, message: str, hint: str = "", *, link: str = "", target: str = "", **kw) -> None:
        super().__init__(message, hint, **kw)
        self.link = link
        self.target = target


def check_build_args(args: Optional[dict]) -> dict:
    """Build arguments as Docker takes them: plain names; values on one line (they reach argv)."""
    out: dict = {}
    for key, value in (args or {}).items():
        if not isinstance(key, str) or not _BUILD_ARG_RE.fullmatch(key):
            raise ValidationError(f"The build argument name {key!r} is not valid.",
                                  "Use ASCII letters, digits and '_' in build argument names, not starting "
                                  "with a digit (e.g. BASE_IMAGE).", code="invalid.build_arg")
        text = str(value)
        if any(c in text for c in "\0\n\r"):
            raise ValidationError(f"The value of the build argument {key} contains a line break or NUL.",
                                  "Give build argument values on one line.", code="invalid.build_arg")
        out[key] = text
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore pattern (Go filepath.Match plus '**') as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                    out += "(?:.*/)?"
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1:j]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out += "[" + body.replace("\\", "\\\\") + "]"
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)  # used with fullmatch: `$` would also match before a final newline


@dataclass
class IgnoreRules:
    rules: list = field(default_factory=list)  # (regex, negated)

    @classmethod
    def parse(cls, text: str) -> "IgnoreRules":
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            if negated:
                line = line[1:].strip()
            line = os.path.normpath(line).replace(os.sep, "/").lstrip("/")
            if line in ("", "."):
                continue
            rules.append((_pattern_regex(line), negated))
        return cls(rules)

    def excluded(self, rel: str) -> bool:
        """Like Docker: the last matching rule wins; a rule matching a parent folder matches too."""
        parts = rel.split("/")
        candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        result = False
        for regex, negated in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = not negated
        return result


def local_folder(path, what: str = "experiment folder") -> Path:
    """A local folder the user named, refused plainly when no file call could use it.

    Without this, a name over the system's limits surfaces as "OSError [Errno 36] File name
    too long" from whichever call touches it first.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValidationError(f"The {what} must be given as a path, not {type(path).__name__}.",
                              "Give the folder as a string or pathlib.Path.", code="invalid.experiment.path")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text:
        raise ValidationError(f"The {what} path is empty or not text.", "Give the folder's path as text.",
                              code="invalid.experiment.path")
    if "\0" in text:
        raise ValidationError(f"The {what} path contains a NUL character.", "Check the path you gave.",
                              code="invalid.experiment.path")
    try:
        p = Path(text).expanduser()
    except RuntimeError:  # '~someone' for a user this system doesn't know
        raise ValidationError(f"The {what} path {text!r} starts with an unknown user's home (~name).",
                              "Give the full path of the folder.", code="invalid.experiment.path") from None
    try:
        encoded = os.fsencode(str(p.absolute()))
        parts = [os.fsencode(part) for part in p.parts]
    except UnicodeEncodeError:
        raise ValidationError(f"The {what} path {text!r} can't be written in this system's file name encoding.",
                              "Rename the folder using ordinary characters.", code="invalid.experiment.path") from None
    for part in parts:
        if len(part) > NAME_MAX:
            shown = os.fsdecode(part)
            raise ValidationError(
                f"The {what} path has a name of {len(part)} bytes ({shown[:40]}…); file systems allow at most "
                f"{NAME_MAX}.", "Rename that folder to a shorter name, or check that the path is the one you meant.",
                code="invalid.experiment.path")
    if len(encoded) >= PATH_MAX:
        raise ValidationError(f"The {what} path is {len(encoded)} bytes long; at most {PATH_MAX - 1} are allowed.",
                              "Move the experiment to a folder with a shorter path.", code="invalid.experiment.path")
    try:
        is_dir = p.is_dir()
    except OSError as exc:  # e.g. a name too long for this particular file system
        raise ValidationError(f"The {what} {text!r} can't be used: {exc.strerror}.",
                              "Check the path; rename or move the folder if a name in it is too long.",
                              code="invalid.experiment.path") from None
    if not is_dir:
        raise ValidationError(f"The {what} {str(p)!r} does not exist.",
                              "Give the folder that holds the experiment (its Dockerfile or experiment.py).",
                              code="invalid.experiment.folder_missing")
    return p


def relative_name(name: str, what: str) -> str:
    """A path inside the folder ('Dockerfile', 'docker/Dockerfile.prod'), never leading out of it."""
    if not isinstance(name, str) or not name or any(ord(c) < 32 or c == "\x7f" for c in name) or "\\" in name:
        raise ValidationError(f"The {what} {name!r} is not a usable file name.",
                              "Give a path inside the experiment folder, e.g. 'Dockerfile'.",
                              code="invalid.experiment.file_name")
    norm = posixpath.normpath(name.replace(os.sep, "/"))
    if posixpath.isabs(norm) or norm == "." or norm == ".." or norm.startswith("../"):
        raise ValidationError(f"The {what} {name!r} is not inside the experiment folder.",
                              "Give a path relative to the experiment folder without '..', e.g. 'Dockerfile'.",
                              code="invalid.experiment.file_name")
    return norm


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def link_target(root: Path, rel: str) -> str:
    """The target of the link `rel` (relative to `root`), if the link stays inside `root`.

    Refused: absolute targets (they name another place on the server or in the image),
    targets that climb out with '..', and links whose chain of links ends outside. Inside
    ones travel as links, as Docker sends them.
    """
    full = root / rel
    target = os.readlink(full)
    where = f"the experiment folder {root.name!r}"
    hint = ("A link that leaves the experiment folder is never sent (what it points to could be a key or a "
            "password). Copy the file into the folder if the experiment needs it, or delete the link "
            "(or list it in .dockerignore).")
    if any(ord(c) < 32 for c in target):
        raise LinkOutsideFolder(f"The link {rel} points to a name with control characters.",
                                "Remove the link or point it at a plain file name.", link=rel, target=target)
    if posixpath.isabs(target):
        raise LinkOutsideFolder(f"The link {rel} points to the absolute path {target}, outside {where}.",
                                hint, link=rel, target=target)
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if lexical == ".." or lexical.startswith("../"):
        raise LinkOutsideFolder(f"The link {rel} points to {target}, outside {where}.", hint, link=rel, target=target)
    real = os.path.realpath(full)
    if not _inside(str(root), real):
        raise LinkOutsideFolder(f"The link {rel} points to {target}, which leads (through another link) to "
                                f"{real}, outside {where}.", hint, link=rel, target=target)
    return target


@dataclass(frozen=True)
class ContextFile:
    path: str        # relative, with '/' separators
    sha256: str
    size: int
    executable: bool
    link: Optional[str] = None  # a symbolic link (inside the folder): its target, sent as a link


@dataclass
class BuildContext:
    """The files Docker would send as build context, with their hashes."""

    root: Path
    dockerfile: str
    files: dict  # path -> ContextFile (links included)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files.values())

    def manifest(self) -> dict:
        """path -> (sha256, executable) for files, ("link", target) for links: what decides
        whether the server's copy is current."""
        return {p: (("link", f.link) if f.link is not None else (f.sha256, f.executable))
                for p, f in self.files.items()}

    def write_tar(self, fileobj, paths: Iterable[str], *, gzip: bool = True) -> None:
        """Write a (gzipped) tar of the given files, with normalised owners and times, file by file.

        Links go in as links. A file is opened without following a link, so one swapped for
        a link after the scan can't carry another file's bytes.
        """
        opts = {"mode": "w:gz", "compresslevel": 6} if gzip else {"mode": "w"}
        with tarfile.open(fileobj=fileobj, **opts) as tar:
            for rel in sorted(paths):
                info = self.files[rel]
                ti = tarfile.TarInfo(rel)
                ti.mtime = 0
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                if info.link is not None:
                    if os.readlink(self.root / rel) != info.link:
                        raise _changed(rel)
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, info.link, 0o777
                    tar.addfile(ti)
                    continue
                try:
                    fd = os.open(self.root / rel, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                except OSError:
                    raise _changed(rel) from None
                with os.fdopen(fd, "rb") as f:
                    st = os.fstat(f.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise _changed(rel)
                    ti.size = st.st_size
                    ti.mode = 0o755 if info.executable else 0o644
                    tar.addfile(ti, f)

    def tar_bytes(self, paths: Iterable[str], *, gzip: bool = True) -> bytes:
        buf = io.BytesIO()
        self.write_tar(buf, paths, gzip=gzip)
        return buf.getvalue()


def _changed(rel: str) -> ValidationError:
    return ValidationError(f"{rel} changed (or became a link) while the experiment was being sent.",
                           "Let the files settle (an editor or a sync tool may be writing them), then try again.",
                           code="invalid.experiment.changed")


def _hash_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _check_name(rel: str) -> None:
    # The server's copy is listed by `find`/`sha256sum` text output: names must read back the same.
    if any(ord(c) < 32 or c == "\x7f" for c in rel) or "\\" in rel:
        raise ValidationError(f"The file name {rel!r} contains a control character (e.g. a newline) or backslash.",
                              "Rename the file; such names break builds on the server.",
                              code="invalid.experiment.file_name")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"The file name {rel.encode('utf-8', 'replace').decode()!r} is not valid UTF-8.",
                              "Rename the file using ordinary characters.", code="invalid.experiment.file_name") from None


def check_links(experiment_dir) -> None:
    """Refuse (LinkOutsideFolder) a link anywhere in the folder that leads out of it; cheap
    (names only, no file read), so deploy checks it before it connects to anything."""
    root = local_folder(experiment_dir).resolve()
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = Path(folder) / name
            if full.is_symlink():
                link_target(root, full.relative_to(root).as_posix())


def scan_context(experiment_dir, dockerfile: str = "Dockerfile") -> BuildContext:
    """Walk the experiment folder as Docker would (respecting .dockerignore) and hash every file.

    Nothing is followed through a link: links inside the folder are recorded as links (their
    target text is part of the tag), links leading out of it are refused (LinkOutsideFolder).
    """
    root = local_folder(experiment_dir).resolve()
    dockerfile = relative_name(dockerfile, "Dockerfile name")
    if not (root / dockerfile).is_file():
        raise DockerfileMissing(
            f"The experiment folder {root.name!r} has no {dockerfile}.",
            "Every experiment needs a Dockerfile at the top of its folder describing its image "
            "(e.g. `FROM python:3.11` then `COPY . /experiment`). Add one, or choose the right folder.")
    rules = read_ignore_rules(root)
    always = {dockerfile, ".dockerignore"}  # Docker sends these even when ignored
    files: dict = {}

    def add(rel: str) -> None:
        _check_name(rel)
        full = root / rel
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = link_target(root, rel)
            digest = hashlib.sha256(b"link\0" + target.encode()).hexdigest()
            files[rel] = ContextFile(rel, digest, 0, False, link=target)
        elif stat.S_ISREG(st.st_mode):
            digest, size = _hash_file(full)
            files[rel] = ContextFile(rel, digest, size, bool(st.st_mode & stat.S_IXUSR))
        # sockets, fifos, devices: not build material; skipped

    has_negation = any(neg for _, neg in rules.rules)
    for dirpath, dirnames, filenames in os.walk(root):  # never descends into linked folders
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # A link to a folder is listed among the folders: it travels as a link, never walked.
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in linked]
        # Prune ignored folders unless a '!' rule could bring something inside back.
        if not has_negation:
            dirnames[:] = [d for d in dirnames if not rules.excluded(rel_dir + d)]
        dirnames.sort()
        for name in sorted(filenames + linked):
            rel = rel_dir + name
            if rel not in always and rules.excluded(rel):
                continue
            add(rel)
    if dockerfile not in files:  # e.g. in a folder .dockerignore leaves out: Docker sends it anyway
        parent = root / posixpath.dirname(dockerfile)
        if os.path.realpath(parent) != str(parent):
            raise LinkOutsideFolder(f"The Dockerfile {dockerfile} is reached through a linked folder.",
                                    "Put the Dockerfile in a real folder of the experiment (not behind a link).",
                                    link=posixpath.dirname(dockerfile))
        add(dockerfile)
    return BuildContext(root, dockerfile, files)


def read_ignore_rules(root: Path) -> "IgnoreRules":
    ignore_file = root / ".dockerignore"
    if ignore_file.is_symlink():
        link_target(root, ".dockerignore")  # never read rules through a link that leaves the folder
    return IgnoreRules.parse(ignore_file.read_text(errors="replace")) if ignore_file.exists() else IgnoreRules()


def content_tag(context: BuildContext, build_args: Optional[dict] = None) -> str:
    """Same files (names, bytes, executable bits, link targets), Dockerfile and build args -> same tag."""
    h = hashlib.sha256()
    h.update(b"labdeploy-content-v1\0")
    h.update(context.dockerfile.encode() + b"\0")
    for rel in sorted(context.files):
        f = context.files[rel]
        if f.link is not None:
            h.update(f"{rel}\0link\0{f.link}\n".encode())
        else:
            h.update(f"{rel}\0{f.sha256}\0{int(f.executable)}\n".encode())
    for key in sorted(build_args or {}):
        h.update(f"arg\0{key}\0{(build_args or {})[key]}\n".encode())
    return h.hexdigest()[:TAG_LENGTH]
