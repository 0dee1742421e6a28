"""What the server holds about one app, read and written by deploy: its facts before a deploy
(stack settings, deploy.json, compose file, Caddy site, secrets, the shared services), its
assets swapped in whole, the last lines of its processes' logs.

Scripts are constants; every value travels as a positional parameter.
"""

from __future__ import annotations

from .. import names
from ..server import layout
from .shell import script

# $1 = the app's folder, $2 = its Caddy site file. Sections: appdir (present when the folder
# exists), stack, state, compose, site, secrets, stackup, end. One round trip.
FACTS = ('[ -d "$1" ] && echo @@appdir; echo @@stack; cat dallinger/stack.json 2>/dev/null; echo; '
         'echo @@state; cat "$1/deploy.json" 2>/dev/null; echo; echo @@compose; cat "$1/docker-compose.yml" '
         '2>/dev/null; echo @@site; cat "$2" 2>/dev/null; echo @@secrets; cat "$1/secrets.env" 2>/dev/null; '
         'echo @@stackup; docker inspect -f "{{.Name}} {{.State.Running}}" dallinger-postgresql dallinger-caddy '
         '2>/dev/null; echo @@end')

# $1 = the assets folder; the new content comes as a gzipped tar on stdin and replaces the
# old one whole (a half-written folder never serves).
SWAP_ASSETS = ('d="$1"; (umask 022 && mkdir -p "${d%/*}") && rm -rf "$d.new" && mkdir -p "$d.new" && '
               'tar -xzf - -C "$d.new" --no-same-owner && chmod -R a+rX "$d.new" && rm -rf "$d.old" && '
               '{ [ ! -d "$d" ] || mv "$d" "$d.old"; } && mv "$d.new" "$d" && rm -rf "$d.old"')

# $1 = label filter of the app's containers, $2 = lines per process. Redis is left out.
LOGS_TAIL = ('for c in $(docker ps -aq --filter "$1"); do '
             'n=$(docker inspect -f \'{{index .Config.Labels "labdeploy.service"}}\' "$c"); '
             '[ "$n" = redis ] && continue; echo "----- $n -----"; docker logs --tail "$2" "$c" 2>&1; done')


# One round trip: each container's service, state, restart count, address on the shared
# network, image, cgroup CPU time ("n<ns>" from cgroup v1 cpuacct, "u<us>" from cgroup v2, "-"
# when neither is readable) and how many of its threads are running or in uninterruptible
# sleep right now ("-" when unknown): CPU time alone can't tell a process waiting for work
# from one waiting for a CPU on a busy machine.
CONTAINERS_NOW = r'''ids=$(docker ps -aq --filter "$1"); [ -n "$ids" ] || exit 0
docker inspect -f '{{index .Config.Labels "labdeploy.service"}} {{.State.Status}} {{.RestartCount}} {{.State.Pid}} {{with index .NetworkSettings.Networks "dallinger"}}{{if .IPAddress}}{{.IPAddress}}{{else}}-{{end}}{{else}}-{{end}} {{.Config.Image}}' $ids |
while read -r svc st rc pid ip img; do
  cpu=- act=- dir=
  if [ "$pid" -gt 0 ] 2>/dev/null && [ -r "/proc/$pid/cgroup" ]; then
    cg=$(sed -n 's/^[0-9]*:[^:]*cpuacct[^:]*:\(.*\)$/\1/p' "/proc/$pid/cgroup")
    for d in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/cpuacct,cpu; do
      [ -n "$cg" ] && [ -r "$d$cg/cpuacct.usage" ] && { dir=$d$cg; cpu=n$(cat "$dir/cpuacct.usage"); break; }
    done
    if [ -z "$dir" ]; then
      cg=$(sed -n 's/^0::\(.*\)$/\1/p' "/proc/$pid/cgroup")
      for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        [ -n "$cg" ] && [ -r "$d$cg/cpu.stat" ] && { dir=$d$cg; cpu=u$(sed -n 's/^usage_usec //p' "$dir/cpu.stat"); break; }
      done
    fi
    if [ -n "$dir" ] && [ -r "$dir/cgroup.procs" ]; then
      act=$(for p in $(cat "$dir/cgroup.procs"); do cat /proc/$p/task/*/stat 2>/dev/null; done |
            sed 's/.*) //' | cut -c1 | grep -c '[RD]')
    fi
  fi
  echo "$svc $st $rc $ip $img $cpu $act"
done'''


def facts(app: str) -> list[str]:
    return script(FACTS, layout.app_dir(app), layout.caddy_site(app))


def swap_assets(app: str) -> list[str]:
    return script(SWAP_ASSETS, f"{layout.app_data(app)}/assets")


def logs_tail(app: str, lines: int) -> list[str]:
    return script(LOGS_TAIL, f"label=labdeploy.app={names.app_name(app)}", int(lines))


def containers_now(app: str) -> list[str]:
    """Each container of the app: service, state, restarts, address, image, CPU time, busy threads."""
    return script(CONTAINERS_NOW, f"label=labdeploy.app={names.app_name(app)}")
