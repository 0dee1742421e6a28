"""Files and folders on the server: the build context's copy, an app's record files, an app's
data folder. Paths are relative to the login user's home (labdeploy.server.layout).
"""

from __future__ import annotations

from typing import Optional

from .shell import script

# ------------------------------------------------------------------ plain

def remove(*paths: str) -> list[str]:
    """`rm -rf` the given paths (never an option: `--` comes first)."""
    return ["rm", "-rf", "--", *paths]


def read(path: str) -> list[str]:
    return ["cat", "--", path]


# ------------------------------------------------------------------ the build context's copy

EXECUTABLE_MARK = "--executable--"
LINKS_MARK = "--links--"
# $1 = the folder (made if missing): sha256 of every file, then the executable files, then
# NUL-separated name and target pairs of the links (readlink: coreutils and busybox alike).
# Nothing is followed through a link.
MANIFEST = ('mkdir -p "$1" && cd "$1" && find . -type f -exec sha256sum {} + && echo --executable-- '
            '&& find . -type f -perm -u=x -print && echo --links-- '
            '&& find . -type l -exec sh -c \'for l; do printf "%s\\0%s\\0" "$l" "$(readlink "$l")"; done\' '
            'sh {} +')


def manifest(folder: str) -> list[str]:
    return script(MANIFEST, folder)


def _strip_dot(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def read_manifest(stdout: str) -> dict:
    """path -> (sha256, executable) for files, ("link", target) for links, from `manifest`."""
    hashes_part, _, rest = stdout.partition(EXECUTABLE_MARK + "\n")
    exec_part, _, links_part = rest.partition(LINKS_MARK + "\n")
    found: dict = {}
    for line in hashes_part.splitlines():
        if not line.strip():
            continue
        escaped = line.startswith("\\")  # sha256sum escapes names with '\' or newline
        if escaped:
            line = line[1:]
        digest, _, name = line.partition("  ")
        if escaped:
            name = name.replace("\\n", "\n").replace("\\\\", "\\")
        found[_strip_dot(name)] = [digest, False]
    for name in exec_part.splitlines():
        name = _strip_dot(name)
        if name in found:
            found[name][1] = True
    fields = links_part.split("\0")
    for name, target in zip(fields[0::2], fields[1::2]):
        found[_strip_dot(name)] = ["link", target]
    return {k: tuple(v) for k, v in found.items()}


# $1 = the folder: delete the NUL-separated paths on stdin, then the folders left empty.
DELETE_LISTED = 'cd "$1" && xargs -0 rm -f -- && find . -mindepth 1 -type d -empty -delete'
# $1 = the folder: unpack the gzipped tar on stdin; the login user owns the files, with their modes.
UNPACK = 'cd "$1" && tar -xzpf - --no-same-owner'


def delete_listed(folder: str) -> list[str]:
    return script(DELETE_LISTED, folder)


def unpack(folder: str) -> list[str]:
    return script(UNPACK, folder)


# ------------------------------------------------------------------ a data folder

# $1 = the folder: "missing", or each file's size in bytes, one a line.
SIZES = 'cd "$1" 2>/dev/null || { echo missing; exit 0; }; find . -type f -printf \'%s\\n\''


def sizes(folder: str) -> list[str]:
    return script(SIZES, folder)


def read_sizes(stdout: str) -> Optional[list[int]]:
    """The files' sizes from `sizes`, or None when the folder does not exist."""
    if stdout.strip() == "missing":
        return None
    return [int(x) for x in stdout.split() if x.isdigit()]


def tar(folder: str) -> list[str]:
    """The folder as a tar stream on stdout. Links travel as links (never followed);
    --hard-dereference: a file linked twice comes twice, not as a link to follow."""
    return ["tar", "-C", folder, "--hard-dereference", "-cf", "-", "."]


# ------------------------------------------------------------------ an app's records

# $1 = folder, $2 = file name: append stdin (one line: O_APPEND keeps concurrent writers apart).
APPEND = 'mkdir -p "$1" && cat >> "$1/$2"'
# $1 = folder, $2 = file to replace with stdin (atomically: temporary file, then rename),
# $3 = file to append $4 to. One round trip.
REPLACE_AND_APPEND = ('mkdir -p "$1" && cat > "$1/.$2.tmp" && chmod 644 "$1/.$2.tmp" && '
                      'mv -f "$1/.$2.tmp" "$1/$2" && printf %s "$4" >> "$1/$3"')


def append(folder: str, name: str) -> list[str]:
    return script(APPEND, folder, name)


def replace_and_append(folder: str, name: str, log_name: str, line: str) -> list[str]:
    """Replace folder/name with stdin and append `line` (no secret: it is on the command line)
    to folder/log_name."""
    return script(REPLACE_AND_APPEND, folder, name, log_name, line)


# $1 = folder (made 0755 if missing), $2 = file name, $3 = its mode (octal); stdin = the content.
# Written atomically: a temporary file that only its owner can read, then the mode, then a
# rename over. One round trip, as against a folder check, an open, a mode and a rename.
WRITE = ('(umask 022 && mkdir -p "$1") && umask 077 && t="$1/.$2.$$.tmp" && '
         '{ cat > "$t" && chmod "$3" "$t" && mv -f "$t" "$1/$2" || { rm -f "$t"; exit 1; }; }')


def write(folder: str, name: str, mode: int) -> list[str]:
    """Replace folder/name with stdin, atomically, with exactly `mode` (see WRITE)."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    return script(WRITE, folder, name, f"{int(mode):o}")
