"""PyPI's Simple JSON API (PEP 691): a project's files with their sha256, and verified downloads.

Only what labdeploy needs to read a release's published files (Dallinger's constraints.txt,
PsyNet's metadata): the file list of one project, and one file fetched into a folder with its
sha256 checked against the index before anything reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import LabdeployError

INDEX_URL = os.environ.get("LABDEPLOY_PYPI_SIMPLE", "https://pypi.org/simple/")
ACCEPT = "application/vnd.pypi.simple.v1+json"
TIMEOUT = 20  # seconds for each request; the files read here are a few MB at most
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PyPIUnreachable(LabdeployError):
    """PyPI (or the configured index) could not be reached or answered an error."""

    code = "pypi.unreachable"


class PyPIIntegrityError(LabdeployError):
    """A downloaded file does not have the sha256 the index lists for it."""

    code = "pypi.integrity"


@dataclass(frozen=True)
class ReleaseFile:
    filename: str
    url: str
    sha256: str
    yanked: bool = False
    requires_python: str = ""

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip"))

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


@dataclass(frozen=True)
class Project:
    name: str
    versions: tuple[str, ...]
    files: tuple[ReleaseFile, ...]

    def files_of(self, version: str) -> list[ReleaseFile]:
        """The files of one release (not yanked), by the name and version in their file names."""
        wanted = _normal_version(version)
        return [f for f in self.files
                if not f.yanked and file_release(f.filename) == (_normal_name(self.name), wanted)]


def file_release(filename: str) -> Optional[tuple[str, str]]:
    """(normalised project name, normalised version) from a wheel or sdist file name."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        if len(parts) < 5:
            return None
        name, version = parts[0], parts[1]
    else:
        m = re.fullmatch(r"(.+)-([^-]+)\.(?:tar\.gz|zip)", filename)
        if not m:
            return None
        name, version = m.groups()
    return _normal_name(name), _normal_version(version)


def _normal_name(name: str) -> str:
    # Wheel and sdist names spell a project with '_' or '-' and any case (PEP 625, PEP 427).
    return re.sub(r"[-_.]+", "_", name).lower()


def _normal_version(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def _get(url: str, accept: Optional[str] = None) -> urllib.request.Request:
    headers = {"User-Agent": "labdeploy (+https://pypi.org/simple/ reader)"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.Request(url, headers=headers)


def _unreachable(what: str, exc: BaseException) -> PyPIUnreachable:
    reason = getattr(exc, "reason", None) or exc
    return PyPIUnreachable(f"PyPI could not be reached for {what}: {reason}.",
                           "Check this computer's internet connection (and a proxy in https_proxy, if your "
                           "network needs one), then try again.")


def project(name: str, *, index_url: Optional[str] = None) -> Project:
    """The project's versions and files, from the Simple JSON API."""
    if not _PROJECT.fullmatch(name):
        raise ValueError(f"not a project name: {name!r}")
    url = (index_url or INDEX_URL).rstrip("/") + f"/{_normal_name(name).replace('_', '-')}/"
    try:
        with urllib.request.urlopen(_get(url, ACCEPT), timeout=TIMEOUT) as resp:
            data = json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _unreachable(f"the list of {name} releases", exc) from None
    files = []
    for f in data.get("files", []):
        sha = (f.get("hashes") or {}).get("sha256", "")
        if not sha or not f.get("url") or not f.get("filename"):
            continue  # a file without a sha256 can't be verified: never used
        files.append(ReleaseFile(filename=f["filename"], url=urllib.request.urljoin(url, f["url"]),
                                 sha256=sha.lower(), yanked=bool(f.get("yanked")),
                                 requires_python=f.get("requires-python") or ""))
    return Project(name=data.get("name", name), versions=tuple(data.get("versions", ())), files=tuple(files))


def download(file: ReleaseFile, folder: Path) -> Path:
    """Fetch `file` into `folder` and check its sha256; the file appears only once verified."""
    folder.mkdir(parents=True, exist_ok=True)
    if "/" in file.filename or file.filename.startswith("."):
        raise PyPIIntegrityError(f"The index lists a file named {file.filename!r}.", "Report this; nothing was kept.")
    target = folder / file.filename
    tmp = folder / f".{file.filename}.{os.getpid()}.part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(_get(file.url), timeout=TIMEOUT) as resp, open(tmp, "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise _unreachable(file.filename, exc) from None
    if digest.hexdigest() != file.sha256:
        tmp.unlink(missing_ok=True)
        raise PyPIIntegrityError(
            f"{file.filename} from {file.url} does not match the sha256 PyPI lists for it "
            f"({digest.hexdigest()[:16]}… instead of {file.sha256[:16]}…); it was not used.",
            "Try again later; if it persists, something between this computer and PyPI changes downloads "
            "(a proxy), which should be looked at.")
    os.replace(tmp, target)
    return target
