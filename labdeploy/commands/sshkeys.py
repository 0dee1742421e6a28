"""The ssh-copy-id step on the server: add a public key to authorized_keys unless it is there."""

from __future__ import annotations

from .shell import script

# $1 = the .ssh folder; the key line arrives on stdin. `set -f` stops a comment with '*' from
# globbing; the key counts as present when its type and body match, whatever the comment or
# options; the file is created 0600 in a 0700 folder. Prints "present" or "added".
INSTALL_KEY = r"""
set -euf
umask 077
d=$1
f="$d/authorized_keys"
key=$(cat)
set -- $key
want="$1 $2"
mkdir -p "$d"
chmod 700 "$d"
if [ -f "$f" ] && awk -v w="$want" '{ for (i = 1; i < NF; i++) if ($i " " $(i+1) == w) found = 1 } END { exit !found }' "$f"; then
  chmod 600 "$f"
  echo present
  exit 0
fi
if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then printf '\n' >> "$f"; fi
printf '%s\n' "$key" >> "$f"
chmod 600 "$f"
echo added
"""


def install_key(ssh_dir: str = ".ssh") -> list[str]:
    """Append the public key line on stdin to `ssh_dir`/authorized_keys unless it is there."""
    return script(INSTALL_KEY, ssh_dir)


def read_install_key(stdout: str) -> bool:
    """True when `install_key` added the key (False: it was there already)."""
    return stdout.strip().endswith("added")
