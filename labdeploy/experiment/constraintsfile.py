"""pip constraints files: read them, make an experiment's own usable, merge them for one image.

Pure text in, text and notes out; nothing here reads the network or the disk.

An experiment image is installed with one constraints file that labdeploy writes:
Dallinger's and PsyNet's versions in use, then the versions the Dallinger release was tested
with (its published constraints.txt), then the experiment's own constraints.txt for whatever
Dallinger does not pin. requirements.txt wins over both: a pin it excludes is left out, and
said so. The experiment's file is sanitised first, because pip refuses in a constraints file
what pip-compile and PsyNet write there: extras ("Constraints cannot have extras"), URLs and
VCS links, editable and option lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

_EGG = re.compile(r"#egg=([A-Za-z0-9][A-Za-z0-9._-]*)")
_URLISH = re.compile(r"^(?:git\+|hg\+|svn\+|bzr\+|https?://|file:|\.{0,2}/)", re.IGNORECASE)


@dataclass(frozen=True)
class Note:
    """Something the researcher should read: 'info' goes to the log, 'warning' to the warnings."""

    level: str
    text: str
    hint: str = ""


@dataclass(frozen=True)
class Pin:
    name: str           # canonical (PEP 503)
    line: str           # as it goes into the merged file: no extras, no hashes
    spec: SpecifierSet
    marker: str = ""

    @property
    def version(self) -> Optional[str]:
        """'2.12.0' for a pin 'rq==2.12.0'; None for ranges and wildcards."""
        specs = list(self.spec)
        if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
            return specs[0].version
        return None


@dataclass(frozen=True)
class Sanitised:
    pins: tuple[Pin, ...]
    notes: tuple[Note, ...]


def logical_lines(text: str) -> list[str]:
    """Lines as pip reads them: continuations joined, comments and blank lines dropped."""
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        line = (buf + raw)
        buf = ""
        # pip: a comment starts at '#' at the line start or after whitespace (URLs keep #egg=).
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    if buf.strip():
        out.append(buf.strip())
    return out


def sanitise(text: str, *, source: str = "constraints.txt") -> Sanitised:
    """The experiment's constraints, as pip accepts them in a constraints file."""
    pins: list[Pin] = []
    notes: list[Note] = []
    extras: list[str] = []
    hashes = False
    for line in logical_lines(text):
        if " --hash" in line or line.startswith("--hash"):
            hashes = True
            line = re.sub(r"\s*--hash[= ]\S+", "", line).strip()
            if not line:
                continue
        if line.startswith("-"):
            notes.append(Note("warning", f"{source}: the line {line!r} was left out (an option; pip's options "
                                         "in a constraints file would change where packages come from).",
                              "Put pip options in requirements.txt if the experiment needs them."))
            continue
        if _URLISH.match(line) or " @ " in line or re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?@", line):
            notes.append(Note("warning", f"{source}: the line {line!r} was left out: a constraints file can't "
                                         "name a URL or a git repository, and the image pins released versions.",
                              "To install a package from git, name it in requirements.txt (labdeploy checks "
                              "before building that its host can be reached)."))
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            notes.append(Note("warning", f"{source}: the line {line!r} can't be read as a package pin; left out.",
                              "Use the form 'name==version' in constraints.txt."))
            continue
        if req.url:
            notes.append(Note("warning", f"{source}: the line {line!r} names a URL; left out.", ""))
            continue
        if req.extras:
            extras.append(f"{req.name}[{','.join(sorted(req.extras))}]")
        marker = str(req.marker) if req.marker else ""
        pins.append(Pin(name=canonicalize_name(req.name), spec=req.specifier, marker=marker,
                        line=f"{req.name}{req.specifier}" + (f"; {marker}" if marker else "")))
    if extras:
        notes.append(Note("info", f"{source}: extras dropped from {', '.join(extras)} (pip refuses extras in "
                                  "constraints; the versions are kept)."))
    if hashes:
        notes.append(Note("info", f"{source}: --hash options dropped (hash checking needs every package "
                                  "hashed, which a merged constraints file can't promise)."))
    return Sanitised(tuple(pins), tuple(notes))


@dataclass(frozen=True)
class Wanted:
    """What requirements.txt asks of one package: a version range, or a URL (None spec)."""

    name: str
    spec: Optional[SpecifierSet]
    line: str

    def allows(self, version: str) -> bool:
        return self.spec is None or self.spec.contains(version, prereleases=True)


def requirements(lines: Iterable[str]) -> dict[str, Wanted]:
    """requirements.txt lines by canonical package name; options and unreadable lines skipped."""
    out: dict[str, Wanted] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("-") and not line.startswith(("-e ", "--editable")):
            continue
        if _URLISH.match(line) or line.startswith(("-e ", "--editable")):
            m = _EGG.search(line)
            if m:
                name = canonicalize_name(m.group(1).split("[")[0])
                out[name] = Wanted(name, None, line)
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        out[name] = Wanted(name, None if req.url else req.specifier, line)
    return out


def release_version_from_url(line: str) -> Optional[str]:
    """'13.3.0' from 'psynet @ git+https://gitlab.com/PsyNetDev/PsyNet@v13.3.0' (a release tag)."""
    m = re.search(r"@v?(\d+(?:\.\d+){1,3}(?:(?:a|b|rc)\d+)?)(?:#|$)", line.strip())
    return m.group(1) if m else None


@dataclass(frozen=True)
class Merged:
    text: str
    notes: tuple[Note, ...] = field(default_factory=tuple)


def merge(*, pinned: Mapping[str, str], release_label: str, release_text: Optional[str],
          release_source: str, experiment_text: Optional[str], requirement_lines: Sequence[str],
          already_said: Iterable[str] = ()) -> Merged:
    """The one constraints file of an image.

    `pinned`: name -> version labdeploy pins itself (dallinger, psynet). `release_text`: the
    Dallinger release's published constraints (None when it publishes none).
    `experiment_text`: the experiment's own constraints.txt (None when it has none).
    `already_said`: packages whose conflicting pin in it was reported already.
    """
    wanted = requirements(requirement_lines)
    said = {canonicalize_name(n) for n in already_said}
    notes: list[Note] = []
    ours = {canonicalize_name(k): v for k, v in pinned.items()}
    lines = ["# Written by labdeploy for this image (made again on every deploy; edits are lost).",
             "# Versions labdeploy pins: the Dallinger and PsyNet in use."]
    lines += [f"{name}=={version}" for name, version in pinned.items()]
    release_pins = sanitise(release_text or "", source=release_source).pins
    release_names = {p.name for p in release_pins}
    if release_text is not None:
        lines.append(f"# {release_label}: the versions it was tested with ({release_source}).")
        overridden = []
        for pin in release_pins:
            if pin.name in ours:
                continue
            want = wanted.get(pin.name)
            if want is not None and (want.spec is None or (pin.version and not want.allows(pin.version))):
                overridden.append((pin, want))
                continue
            lines.append(pin.line)
        for pin, want in overridden:
            notes.append(Note("warning", f"requirements.txt asks {want.line!r}; {release_label} was tested with "
                                         f"{pin.line}. The requirement wins.",
                              "If the app misbehaves (a worker that fails jobs, say), remove that line from "
                              "requirements.txt so the tested version is used."))
    if experiment_text is not None:
        own = sanitise(experiment_text)
        notes += own.notes
        kept, differ = [], []
        for pin in own.pins:
            if pin.name in ours:
                if not pin.spec.contains(ours[pin.name], prereleases=True) and pin.name not in said:
                    notes.append(Note("warning", f"constraints.txt pins {pin.line}, but {pin.name} "
                                                 f"{ours[pin.name]} is used; that pin was left out.",
                                      "constraints.txt was made for other versions: regenerate it for the "
                                      "versions in requirements.txt (`psynet setup`/`dallinger "
                                      "generate-constraints`), or ignore this: labdeploy pins the versions "
                                      "in use itself."))
                continue
            if pin.name in release_names:
                rel = next(p for p in release_pins if p.name == pin.name)
                if rel.line.split(";")[0] != pin.line.split(";")[0]:
                    differ.append(f"{pin.name} {pin.version or pin.spec} → {rel.version or rel.spec}")
                continue
            want = wanted.get(pin.name)
            if want is not None and (want.spec is None or (pin.version and not want.allows(pin.version))):
                notes.append(Note("warning", f"constraints.txt pins {pin.line}, but requirements.txt asks "
                                             f"{want.line!r}; the requirement wins.", ""))
                continue
            kept.append(pin.line)
        if differ:
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            notes.append(Note("warning", f"constraints.txt differs from what {release_label} was tested with for "
                                         f"{len(differ)} package(s); the tested versions are used: {shown}.",
                              "To keep a version of your own, name it in requirements.txt (it wins over both)."))
        if kept:
            lines.append("# The experiment's constraints.txt, for packages the release does not pin (sanitised).")
            lines += kept
    return Merged("\n".join(lines) + "\n", tuple(notes))
