"""Images on the server's engine: pull, build, load, look up, remove.

A pull or a build ends by printing the new image's ID on one marked line (`@@id sha256:...`),
saving a round trip for `docker image inspect`; `image_id_in` finds that line.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from .docker import app_filter
from .shell import script

ID_MARK = "@@id "
_PRINT_ID = 'echo "' + ID_MARK + '$(docker image inspect --format \'{{.Id}}\' "$ref")"'

# $1 = reference to pull, $2 = reference to tag it as, or "".
PULL = 'ref="$1"; docker pull "$1" && { [ -z "$2" ] || docker tag "$1" "$2"; } && ' + _PRINT_ID
# $1 = the reference the build tags, then the build's argv.
BUILD = 'ref="$1"; shift; "$@" && ' + _PRINT_ID


def with_docker_config(config_dir: Optional[str], argv: Sequence[str]) -> list[str]:
    """`argv` with DOCKER_CONFIG set to `config_dir` (an absolute path on the server), so a
    registry login lives in a folder of its own; unchanged with None."""
    return (["env", f"DOCKER_CONFIG={config_dir}"] if config_dir else []) + list(argv)


def pull(ref: str, tag_as: str = "", *, config_dir: Optional[str] = None) -> list[str]:
    """`docker pull ref`, tag it as `tag_as` (if given), print its ID; one round trip."""
    return with_docker_config(config_dir, script(PULL, ref, tag_as or ""))


def build(ref: str, build_argv: Sequence[str]) -> list[str]:
    """Run `build_argv` (a `docker build ... -t ref ...`) with BuildKit's plain progress, then
    print the ID of `ref`."""
    return ["env", "BUILDKIT_PROGRESS=plain", *script(BUILD, ref, *build_argv)]


def image_id_in(line: str) -> Optional[str]:
    """The ID from the marked line `pull` or `build` printed, or None for any other line."""
    return line[len(ID_MARK):].strip() if line.startswith(ID_MARK) else None


def image_id(ref: str) -> list[str]:
    """The engine's ID of `ref` (exit status 1 when it lacks the image)."""
    return ["docker", "image", "inspect", "--format", "{{.Id}}", ref]


def load() -> list[str]:
    """`docker load` of the (gzipped) tar on stdin."""
    return ["docker", "load"]


def app_images(app: str) -> list[str]:
    """One JSON line per image labelled as the app's."""
    return ["docker", "image", "ls", "--no-trunc", "--filter", app_filter(app), "--format", "{{json .}}"]


def read_app_images(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


LAYERS = ("docker image ls -q --no-trunc | sort -u | "
          "xargs -r docker image inspect --format '{{json .RootFS.Layers}}'")


def layers() -> list[str]:
    """Each image's layer list (diff IDs), one JSON array per line."""
    return script(LAYERS)


def read_layers(stdout: str) -> list[list[str]]:
    return [json.loads(line) for line in (ln.strip() for ln in stdout.splitlines()) if line.startswith("[")]
