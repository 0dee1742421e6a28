"""The shared Caddy: read its configuration again; replace a site and reload in one go."""

from __future__ import annotations

from ..server import layout
from .shell import script


def reload(container: str = layout.CADDY_CONTAINER, config: str = "/etc/caddy/Caddyfile") -> list[str]:
    """Make Caddy read the Caddyfile (and caddy.d/*) again; a bad file is refused, the old
    configuration stays live."""
    return ["docker", "exec", container, "caddy", "reload", "--config", config, "--adapter", "caddyfile"]


# The Caddyfile is a file mount: Caddy sees a file written in place (same inode), never one
# renamed over it. So the new text is uploaded beside it and copied into it.
REPLACE_IN_PLACE = r'''
cat -- "$1.new" > "$1" && rm -f -- "$1.new"
'''

# A graceful reload of the shared Caddy after prepare changed its files, when the Caddyfile the
# container reads is the one on the host (a file someone replaced by renaming is not: then
# only a new container sees it, exit STALE_MOUNT). `force`: the same text, a changed trusted CA.
RELOAD_MOUNTED = r'''
host=$(sha256sum < "$2" | cut -d' ' -f1) || exit 1
seen=$(docker exec "$1" sha256sum /etc/caddy/Caddyfile 2>/dev/null | cut -d' ' -f1)
[ -n "$host" ] && [ "$host" = "$seen" ] || exit 90
if [ "$3" = force ]; then
  exec docker exec "$1" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force
fi
exec docker exec "$1" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile
'''
STALE_MOUNT = 90


def replace_in_place(path: str) -> list[str]:
    """Copy `<path>.new` into `path` (same inode), then remove it."""
    return script(REPLACE_IN_PLACE, path)


def reload_mounted(container: str, caddyfile: str, force: bool = False) -> list[str]:
    return script(RELOAD_MOUNTED, container, caddyfile, "force" if force else "")

NOT_RUNNING = 3  # exit status of ROUTE when Caddy does not run (nothing was written)
REFUSED = 4  # exit status of ROUTE when Caddy refused the new site (the previous file is back)

# $1 = the Caddy container, $2 = the sites' folder, $3 = the site file's name; stdin = the new
# site. Writes it atomically (0644), makes Caddy read its configuration again, and when Caddy
# refuses it puts the previous file back (or removes the new one if there was none), so the
# file always says what Caddy serves. One round trip instead of a write, a check and a reload.
# The new and the previous file wait outside the folder: Caddy imports every file in it, dot
# files too.
ROUTE = ('[ "$(docker inspect -f "{{.State.Running}}" "$1" 2>/dev/null)" = true ] || { cat >/dev/null; exit 3; }; '
         'cd "$2" && t="../.$3.site.$$.new" && o="../.$3.site.$$.old" && cat > "$t" && chmod 644 "$t" || exit 5; '
         'had=; [ ! -e "$3" ] || { cp -p "$3" "$o" && had=1; } || exit 5; mv -f "$t" "$3" || exit 5; '
         'if docker exec "$1" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile; then rm -f "$o"; exit 0; fi; '
         'if [ -n "$had" ]; then mv -f "$o" "$3"; else rm -f "$3"; fi; exit 4')


def route(folder: str, name: str, container: str = layout.CADDY_CONTAINER) -> list[str]:
    """Replace one site file with stdin and reload Caddy, in one command (see ROUTE)."""
    return script(ROUTE, container, folder, name)
