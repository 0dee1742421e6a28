"""What an app's containers run when they start, for its compose document.

These run inside the containers, not on the server. Compose reads `$` in a compose file as
its own variables, so every `$` the shell needs is written `$$` (`compose_escaped`).
"""

from __future__ import annotations

import re

# The pooler (labdeploy.server.pooler): its password reaches the container from a 0600 env
# file read by the Docker daemon; its configuration is written to a tmpfs.
POOLER_ENV_FILE = "pooler.env"  # in ~/dallinger/<app>, mode 0600: only the pooler's password
POOLER_PASSWORD_VAR = "LABDEPLOY_POOLER_PASSWORD"
POOLER_CONFIG_DIR = "/run/labdeploy-pooler"  # a tmpfs inside the container
PYTHON_MOUNT = "/opt/labdeploy/psycopg-gevent"  # the pooled processes' sitecustomize

_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_INI_END = "LABDEPLOY_INI"


def pooler_script(role: str, config: str) -> str:
    """The pooler's start script: write the configuration (pgbouncer.ini) and the role's user
    list into the tmpfs with umask 077 (only the container's user may read them), drop the
    password from the environment, exec pgbouncer. printf is a shell builtin: the password
    is on no command line.

    The one script here with values in its text: Compose compares a service's entrypoint
    between deploys, and a changed text would replace every pooled app's running pooler (and
    the connections it holds) at its next update. The values can't end the text they sit in:
    the role is a PostgreSQL identifier and the configuration sits in a quoted here-document
    that no line of it may end."""
    if not _ROLE_RE.fullmatch(role):
        raise ValueError(f"{role!r} is not a database role name")
    if any(line.strip() == _INI_END for line in config.splitlines()):
        raise ValueError("the pooler's configuration would end its here-document")
    return "\n".join([
        "set -eu",
        "umask 077",
        f"dir={POOLER_CONFIG_DIR}",
        f'pw="${{{POOLER_PASSWORD_VAR}:-}}"',
        f"unset {POOLER_PASSWORD_VAR}",
        'case "$pw" in',
        "  ''|*[!A-Za-z0-9_-]*)",
        f'    echo "labdeploy: {POOLER_PASSWORD_VAR} is missing or not URL-safe in {POOLER_ENV_FILE}; '
        'redeploy the app." >&2',
        "    exit 78;;",
        "esac",
        f"printf '\"%s\" \"%s\"\\n' {role} \"$pw\" > \"$dir/userlist.txt\"",
        "pw=",
        f"cat > \"$dir/pgbouncer.ini\" <<'{_INI_END}'",
        config.rstrip("\n"),
        _INI_END,
        'exec pgbouncer "$dir/pgbouncer.ini"',
        "",
    ])


def compose_escaped(argv: list[str]) -> list[str]:
    """`argv` as a compose file must hold it: `$` doubled, so Compose passes it on as `$`."""
    return [a.replace("$", "$$") for a in argv]


def pooler_start(role: str, config: str) -> list[str]:
    """The pooler's entrypoint (not yet escaped for Compose)."""
    return ["sh", "-c", pooler_script(role, config), "labdeploy-pooler"]


def process_line(line: str, *, pooled: bool = False) -> str:
    """A process's shell line from the experiment's Procfile (or Dallinger's own command),
    run with `exec` so the process gets Docker's stop signal; pooled, with the sitecustomize
    on its PYTHONPATH (the image's own PYTHONPATH kept after it)."""
    prefix = f"PYTHONPATH={PYTHON_MOUNT}${{PYTHONPATH:+:$PYTHONPATH}} exec " if pooled else "exec "
    return prefix + line


def process(line: str, *, pooled: bool = False) -> list[str]:
    """A process's command (not yet escaped for Compose). The Procfile line is the
    researcher's own shell code, so it is the script itself, not a value."""
    return ["sh", "-c", process_line(line, pooled=pooled)]
