"""Which Dallinger (and PsyNet) release an experiment's image uses, and the versions that
Dallinger release was tested with.

Each Dallinger release ships `constraints.txt` in its sdist on PyPI (dallinger-12.4.0.tar.gz
pins rq==2.12.0 among 200 others, "Compiled for Python 3.11"); without it pip takes the newest
of everything, and rq 3 makes Dallinger 12.4's worker fail every job. PsyNet states the
Dallinger it works with in its metadata (PsyNet 13.3.0: dallinger[docker]>=12.2.0,<13).

The release used:
1. `dallinger==X` in requirements.txt: X.
2. else a `dallinger==X` pin in the experiment's constraints.txt that fits PsyNet's range: X
   (the author's lock).
3. else the newest final release that fits PsyNet's range and requirements.txt's range.
   The base image's own Dallinger is not used for the choice: it is not known before the
   build, and the image then pins its Dallinger whatever the base holds, so it is always
   consistent (a base with the same release installs nothing again).

Files come from PyPI's Simple JSON API (PEP 691), their sha256 checked against the index, and
what was read from them is cached under the user's cache folder (platformdirs), so later
deploys need no network for a pinned release. Without PyPI, case 3 falls back to the newest
cached release that fits, and says so; with nothing cached a clear error comes before anything
is built.
"""

from __future__ import annotations

import email.parser
import re
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import platformdirs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import pypi
from .constraintsfile import Note, Pin, Wanted, release_version_from_url, requirements, sanitise
from ..errors import LabdeployError, ValidationError
from ..localfiles import write_atomic

MAX_MEMBER = 4 << 20  # bytes read from one archive member (constraints.txt is ~10 KB)
_INDEX_TTL = 300  # seconds one process reuses a project's file list


class ReleaseUnavailable(LabdeployError):
    """What a release published could not be read: PyPI unreachable and nothing cached."""

    code = "pypi.release_unavailable"


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("labdeploy")) / "releases"


def constraints_path(version: str) -> Path:
    return cache_dir() / f"dallinger-{version}-constraints.txt"


def _psynet_path(version: str) -> Path:
    return cache_dir() / f"psynet-{version}-requires-dallinger.txt"


_index: dict[str, tuple[float, pypi.Project]] = {}


def _project(name: str) -> pypi.Project:
    hit = _index.get(name)
    if hit and time.monotonic() - hit[0] < _INDEX_TTL:
        return hit[1]
    proj = pypi.project(name)
    _index[name] = (time.monotonic(), proj)
    return proj


# --------------------------------------------------------------------------- what a release published

@dataclass(frozen=True)
class ReleaseConstraints:
    version: str
    text: Optional[str]  # None: the release publishes no constraints.txt
    source: str          # e.g. "constraints.txt in dallinger-12.4.0.tar.gz, sha256 b155a17de96d…"
    python: str = ""     # "3.11" from "Compiled for Python 3.11", when the file says

    @property
    def label(self) -> str:
        return f"Dallinger {self.version}"


def release_constraints(version: str) -> ReleaseConstraints:
    """Dallinger `version`'s published constraints: from the cache, else from its sdist on PyPI."""
    version = _plain_version(version)
    path = constraints_path(version)
    none_marker = path.with_suffix(".none")
    if path.is_file():
        return _constraints_from_text(version, path.read_text())
    if none_marker.is_file():
        return ReleaseConstraints(version, None, none_marker.read_text().strip())
    try:
        proj = _project("dallinger")
    except pypi.PyPIUnreachable as exc:
        raise ReleaseUnavailable(
            f"The versions Dallinger {version} was tested with (its constraints.txt on PyPI) are needed "
            f"for the image, and PyPI can't be reached: {exc.message}",
            f"Connect this computer to the internet once (they are kept in {cache_dir()} afterwards), or "
            f"put them there yourself: `pip download --no-deps --no-binary :all: dallinger=={version}`, then "
            f"copy constraints.txt out of the archive to {path}.") from None
    sdists = [f for f in proj.files_of(version) if f.is_sdist]
    if not sdists:
        raise ValidationError(f"Dallinger {version} has no source archive on PyPI (or no such release).",
                              "Pin a Dallinger release that exists (see https://pypi.org/project/dallinger/#history).",
                              code="invalid.requirements.dallinger_unknown")
    sdist = sdists[0]
    with tempfile.TemporaryDirectory(prefix="labdeploy-pypi-") as tmp:
        archive = pypi.download(sdist, Path(tmp))
        text = _top_level_member(archive, "constraints.txt")
    source = f"constraints.txt in {sdist.filename}, sha256 {sdist.sha256[:12]}…"
    cache_dir().mkdir(parents=True, exist_ok=True)
    if text is None:
        write_atomic(none_marker, f"{sdist.filename} (sha256 {sdist.sha256}) has no constraints.txt\n", 0o644)
        return ReleaseConstraints(version, None, none_marker.read_text().strip())
    write_atomic(path, f"# labdeploy: {source}\n# sha256 of {sdist.filename}: {sdist.sha256}\n" + text, 0o644)
    return _constraints_from_text(version, path.read_text())


def _constraints_from_text(version: str, text: str) -> ReleaseConstraints:
    source = f"constraints.txt of Dallinger {version}"
    python = ""
    for line in text.splitlines()[:12]:
        if line.startswith("# labdeploy: "):
            source = line[len("# labdeploy: "):].strip()
        if "Compiled for Python" in line:
            python = line.rsplit(" ", 1)[-1].strip()
    return ReleaseConstraints(version, text, source, python)


def _top_level_member(archive: Path, name: str) -> Optional[str]:
    """The text of `<top folder>/<name>` in an sdist, read without extracting anything."""
    if archive.name.endswith(".zip") or archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] == name and not info.is_dir() and info.file_size <= MAX_MEMBER:
                    return z.read(info).decode("utf-8", "replace")
        return None
    with tarfile.open(archive, "r:*") as t:
        for member in t:
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == name and member.isfile() and member.size <= MAX_MEMBER:
                f = t.extractfile(member)
                return f.read().decode("utf-8", "replace") if f else None
    return None


def psynet_dallinger_range(version: str) -> str:
    """The Dallinger versions PsyNet `version` requires (e.g. '<13,>=12.2.0'; '' for any),
    read from its wheel's metadata (or its sdist's PKG-INFO), cached."""
    version = _plain_version(version)
    path = _psynet_path(version)
    if path.is_file():
        return path.read_text().strip()
    try:
        proj = _project("psynet")
    except pypi.PyPIUnreachable as exc:
        raise ReleaseUnavailable(
            f"Which Dallinger PsyNet {version} needs is read from PyPI once, and PyPI can't be reached: "
            f"{exc.message}",
            f"Connect this computer to the internet once (the answer is kept in {cache_dir()}), or pin "
            "dallinger==VERSION in requirements.txt next to psynet.") from None
    files = proj.files_of(version)
    chosen = next((f for f in files if f.is_wheel), None) or next((f for f in files if f.is_sdist), None)
    if chosen is None:
        raise ValidationError(f"PsyNet {version} is not on PyPI.",
                              "Pin a PsyNet release that exists (https://pypi.org/project/psynet/#history).",
                              code="invalid.requirements.psynet_unknown")
    with tempfile.TemporaryDirectory(prefix="labdeploy-pypi-") as tmp:
        archive = pypi.download(chosen, Path(tmp))
        metadata = _metadata(archive)
    spec = ""
    for line in email.parser.Parser().parsestr(metadata or "").get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == "dallinger" and (req.marker is None or req.marker.evaluate({"extra": ""})):
            spec = str(req.specifier)
    cache_dir().mkdir(parents=True, exist_ok=True)
    write_atomic(path, spec + "\n", 0o644)
    return spec


def _metadata(archive: Path) -> Optional[str]:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    return z.read(info).decode("utf-8", "replace")
        return None
    return _top_level_member(archive, "PKG-INFO")


def _plain_version(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        raise ValidationError(f"{version!r} is not a version number.", "Use a release such as 12.4.0.",
                              code="invalid.version") from None


# --------------------------------------------------------------------------- the choice

@dataclass(frozen=True)
class Choice:
    """The releases an image is built with, and why."""

    dallinger: str
    psynet: Optional[str] = None
    dallinger_pinned: bool = True   # the image pins dallinger==X (False: requirements install it from a URL)
    psynet_pinned: bool = False     # the image pins psynet==X
    why: str = ""
    notes: tuple[Note, ...] = ()
    reported: frozenset = frozenset()  # packages whose pin in constraints.txt a note already refused

    @property
    def pins(self) -> dict[str, str]:
        out = {"dallinger": self.dallinger} if self.dallinger_pinned else {}
        if self.psynet and self.psynet_pinned:
            out["psynet"] = self.psynet
        return out


def _exact(w: Optional[Wanted]) -> Optional[str]:
    if w is None or w.spec is None:
        return None
    return Pin(w.name, w.line, w.spec).version


def _newest(name: str, spec: SpecifierSet, need_sdist: bool) -> tuple[Optional[str], Optional[Note]]:
    """The newest final release of `name` within `spec` on PyPI; without PyPI, the newest one
    cached (Dallinger) and a note saying so."""
    try:
        proj = _project(name)
    except pypi.PyPIUnreachable as exc:
        if name != "dallinger":
            raise ReleaseUnavailable(f"The newest {name} release is looked up on PyPI, which can't be reached: "
                                     f"{exc.message}", f"Pin {name}==VERSION in requirements.txt, or connect "
                                                      "this computer to the internet.") from None
        cached = [p.name[len("dallinger-"):-len("-constraints.txt")]
                  for p in cache_dir().glob("dallinger-*-constraints.txt")] if cache_dir().is_dir() else []
        best = max(spec.filter(_valid(cached)), key=Version, default=None)
        if best is None:
            raise ReleaseUnavailable(
                f"The Dallinger release for this image is chosen on PyPI (the newest one that fits"
                f"{' ' + str(spec) if str(spec) else ''}), and PyPI can't be reached: {exc.message}",
                f"Connect this computer to the internet once, or pin dallinger==VERSION in requirements.txt and "
                f"put that release's constraints.txt in {cache_dir()} (see the labdeploy.dallingerrelease "
                "module's notes).") from None
        return best, Note("warning", f"PyPI can't be reached, so Dallinger {best} is used: the newest release "
                                     f"that fits whose constraints are cached here (a newer one may exist).",
                          "Deploy again when online to use the newest release, or pin dallinger in "
                          "requirements.txt.")
    usable = [v for v in _valid(proj.versions)
              if any((f.is_sdist or not need_sdist) for f in proj.files_of(v))]
    return max(spec.filter(usable), key=Version, default=None), None


def _valid(versions: Sequence[str]) -> list[str]:
    out = []
    for v in versions:
        try:
            Version(v)
            out.append(v)
        except InvalidVersion:
            pass
    return out


def _choose_psynet(kind: str, w_psy, own: dict, notes: list) -> tuple[Optional[str], bool]:
    """(PsyNet release, whether the image pins it): requirements.txt's pin, its git tag, the
    experiment's constraints.txt pin, else the newest release that fits."""
    if kind != "psynet" and w_psy is None:
        return None, False
    psynet = _exact(w_psy)
    if psynet:
        return psynet, True
    if w_psy is not None and w_psy.spec is None:
        return release_version_from_url(w_psy.line), False  # a git URL: its tag, for the Dallinger range only
    spec = w_psy.spec if w_psy is not None else SpecifierSet()
    pin = own.get("psynet")
    if pin is not None and pin.version and spec.contains(pin.version, prereleases=True):
        psynet, why = pin.version, "pinned in constraints.txt"
    else:
        psynet, _ = _newest("psynet", spec, need_sdist=False)
        why = f"the newest release{' within ' + str(spec) if str(spec) else ''}"
    if psynet is None:
        raise ValidationError(f"No PsyNet release fits requirements.txt's {w_psy.line if w_psy else 'psynet'}.",
                              "Pin psynet==VERSION in requirements.txt.", code="invalid.requirements.no_psynet")
    notes.append(Note("info", f"PsyNet {psynet}: {why}."))
    return psynet, True


def choose(kind: str, requirement_lines: Sequence[str], experiment_constraints: Optional[str]) -> Choice:
    """The Dallinger (and PsyNet) release for an image, from the experiment's files and PyPI."""
    wanted = requirements(requirement_lines)
    own = {p.name: p for p in sanitise(experiment_constraints or "").pins}
    notes: list[Note] = []
    reported: frozenset = frozenset()
    w_dal = wanted.get("dallinger")
    psynet, psynet_pinned = _choose_psynet(kind, wanted.get("psynet"), own, notes)
    needs = SpecifierSet()
    needs_text = ""
    if psynet:
        try:
            needs = SpecifierSet(psynet_dallinger_range(psynet))
        except InvalidSpecifier:
            needs = SpecifierSet()
        needs_text = f"PsyNet {psynet} needs dallinger{needs}" if str(needs) else ""

    # A Dallinger installed from a URL (git, or a wheel file) is not pinned again; its version
    # (a release tag, the wheel's name) still chooses the constraints.
    exact, from_url = _exact(w_dal), w_dal is not None and w_dal.spec is None
    if exact is None and from_url:
        exact = release_version_from_url(w_dal.line)
    for line in requirement_lines:
        m = re.match(r"^file:(?:.*/)?dallinger-([0-9][A-Za-z0-9.+!_]*?)-py", line.strip(), re.IGNORECASE)
        if exact is None and m:
            exact, from_url = m.group(1), True
    if exact:
        if str(needs) and not needs.contains(exact, prereleases=True):
            raise ValidationError(f"requirements.txt asks dallinger {exact}, but {needs_text}.",
                                  "Change one of the two pins in requirements.txt so they fit together.",
                                  code="invalid.requirements.conflict")
        why = "named in requirements.txt" + (" (the version of the package it installs)" if from_url else "")
        return Choice(exact, psynet, dallinger_pinned=not from_url, psynet_pinned=psynet_pinned,
                      why=why, notes=(*notes, Note("info", f"Dallinger {exact}: {why}.")))

    spec = needs & (w_dal.spec if w_dal is not None and w_dal.spec is not None else SpecifierSet())
    pin = own.get("dallinger")
    if pin is not None and pin.version:
        if spec.contains(pin.version, prereleases=True):
            why = "pinned in the experiment's constraints.txt"
            return Choice(pin.version, psynet, dallinger_pinned=not from_url, psynet_pinned=psynet_pinned, why=why,
                          notes=(*notes, Note("info", f"Dallinger {pin.version}: {why}.")))
        against = needs_text or f"requirements.txt asks dallinger{spec}"
        notes.append(Note("warning", f"constraints.txt pins {pin.line}, but {against}: that pin is left out.",
                          "constraints.txt was made for another PsyNet/Dallinger: regenerate it (`psynet setup` or "
                          "`dallinger generate-constraints`), or delete it."))
        reported = frozenset({"dallinger"})
    best, offline = _newest("dallinger", spec, need_sdist=True)
    if best is None:
        raise ValidationError(f"No Dallinger release fits {needs_text or 'requirements.txt'} ({spec}).",
                              "Check the dallinger and psynet lines in requirements.txt.",
                              code="invalid.requirements.no_dallinger")
    if offline:
        notes.append(offline)
    why = (f"the newest release {needs_text.replace(' needs ', ' allows: ') if needs_text else 'on PyPI'}"
           + (f" and requirements.txt's {w_dal.line}" if w_dal is not None and str(w_dal.spec or "") else ""))
    notes.append(Note("info", f"Dallinger {best}: {why} (pin dallinger==VERSION in requirements.txt to choose "
                              "another)."))
    return Choice(best, psynet, dallinger_pinned=not from_url, psynet_pinned=psynet_pinned, why=why,
                  notes=tuple(notes), reported=reported)
