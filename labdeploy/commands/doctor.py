"""The host facts `doctor` reads in one round trip: the disk holding the home folder, memory,
and the deploy locks held (with their age in seconds)."""

from __future__ import annotations

from .shell import script

# $1 = the locks folder. Lines: "disk <size KB> <available KB>", "mem <total KB> <available KB>",
# "lock <name> <age s>".
FACTS = ('df -Pk . | awk \'NR==2 {print "disk", $2, $4}\'; '
         'awk \'/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print "mem", t, a}\' /proc/meminfo; '
         'now=$(date +%s); for d in "$1"/*; do [ -d "$d" ] || continue; '
         'echo "lock $(basename "$d") $((now - $(stat -c %Y "$d")))"; done')


def facts(locks_dir: str) -> list[str]:
    return script(FACTS, locks_dir)


def read_facts(stdout: str) -> dict:
    out: dict = {"locks": {}}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("disk", "mem") and parts[1].isdigit() and parts[2].isdigit():
            out[parts[0]] = (int(parts[1]) * 1024, int(parts[2]) * 1024)
        elif len(parts) == 3 and parts[0] == "lock" and parts[2].lstrip("-").isdigit():
            out["locks"][parts[1]] = int(parts[2])
    return out
