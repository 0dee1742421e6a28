"""Backup speed: labdeploy's backup + pull vs the plain way, and restore vs pg_restore by hand.

A database of 1,000,000 rows (the responses table of bench/export.py, ~100 MB as CSV) on the
testbed server, then, in turn (A B A B ..., so a drift of the machine's speed hits both):

  labdeploy   backup.now(app, server) + backup.pull(server, DIR, app): pg_dump --format=custom in
              the stack's backup service with the row counts read in the dump's own snapshot,
              fsync, sha256, manifest; then the new file over the one SSH connection, hashed as
              it arrives, 0600, renamed only when its sha256 matches
  plain       ssh server "docker exec dallinger-postgresql pg_dump -Fc -U dallinger DB" > file

Then: a second pull with nothing new and one with one new backup (only that file travels), and
restore(app, server, "latest", into=...) (checked row counts, a new database swapped in) beside
`createdb` + `docker exec -i dallinger-postgresql pg_restore` fed the pulled file by hand.
Goal: backup + pull within 1.1x of the plain way. Run: .venv/bin/python bench/backup.py [--rows N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export import SCHEMA  # noqa: E402  (the same 1M-row table as the export benchmark)

TESTBED = os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json")
APP = "t-bk-bench"
DB = "app_t_bk_bench"


def testbed() -> dict:
    with open(TESTBED) as f:
        return json.load(f)


def ssh_argv(tb: dict, known_hosts: str) -> list[str]:
    s = tb["ssh"]
    return ["ssh", "-q", "-i", s["key"], "-p", str(s["port"]), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{s['user']}@{s['host']}"]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from labdeploy import backup
    from labdeploy.remote import Remote
    from labdeploy.server import psql, stack

    tb = testbed()
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    kh = work / "known_hosts"
    kh.write_text(tb["ssh"]["known_hosts_line"] + "\n")
    s = tb["ssh"]
    remote = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False).connect()
    stack.prepare(remote, stack.StackSettings.for_images(tb["images"], domain="localhost"))
    print(f"setting up {DB} with {args.rows:,} rows ...", flush=True)
    psql.run_sql(remote, f"DROP DATABASE IF EXISTS {DB};\nCREATE DATABASE {DB};\n")
    psql.run_sql(remote, SCHEMA.replace("%d", str(args.rows)), database=DB, timeout=1800)
    remote.run(["rm", "-rf", "--", f"dallinger-data/backups/{APP}"])
    ssh = ssh_argv(tb, str(kh))
    plain_file = work / "plain.dump"
    pulled = work / "pulled"

    def labdeploy_way() -> None:
        backup.now(APP, remote)
        backup.pull(remote, pulled, APP)

    def plain_way() -> None:
        with open(plain_file, "wb") as out:
            subprocess.run([*ssh, f"docker exec {'dallinger-postgresql'} pg_dump -Fc -U dallinger {DB}"],
                           stdout=out, check=True)

    labdeploy_way()  # warm-up: caches, the first SFTP session
    plain_way()
    ours, plain, ratios = [], [], []
    for _ in range(args.repeats):
        a = timed(labdeploy_way)
        b = timed(plain_way)
        ours.append(a), plain.append(b), ratios.append(a / b)
    size = plain_file.stat().st_size
    print(f"\ndump size: {size / 1e6:.1f} MB ({args.rows:,} rows)")
    print(f"backup + pull  labdeploy  median {statistics.median(ours):6.2f} s   (min {min(ours):.2f}, max {max(ours):.2f})")
    print(f"pg_dump | ssh  plain      median {statistics.median(plain):6.2f} s   (min {min(plain):.2f}, max {max(plain):.2f})")
    print(f"ratio labdeploy / plain, pair by pair: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)   goal: within 1.1x")

    nothing = backup.pull(remote, pulled, APP)
    t = timed(lambda: backup.pull(remote, pulled, APP))
    print(f"\npull with nothing new: {t:.2f} s, {int(nothing['pulled'].sum())} files sent of {len(nothing)}")
    backup.now(APP, remote)
    t0 = time.perf_counter()
    one = backup.pull(remote, pulled, APP)
    print(f"pull after one new backup: {time.perf_counter() - t0:.2f} s, {int(one['pulled'].sum())} file sent "
          f"of {len(one)}")

    into = f"{APP}-r"
    for name in (into,):
        psql.run_sql(remote, f"DROP DATABASE IF EXISTS app_{name.replace('-', '_')};")
    t_restore = timed(lambda: backup.restore(APP, remote, "latest", into=into))
    psql.run_sql(remote, "DROP DATABASE IF EXISTS bench_by_hand;\nCREATE DATABASE bench_by_hand;\n")
    t_hand = timed(lambda: subprocess.run(
        [*ssh, "docker exec -i dallinger-postgresql pg_restore -U dallinger -d bench_by_hand"],
        stdin=open(plain_file, "rb"), check=True))
    print(f"\nrestore (labdeploy, into a new app, counts checked): {t_restore:.2f} s")
    print(f"pg_restore by hand (createdb first, no checks):      {t_hand:.2f} s   ratio {t_restore / t_hand:.2f}x")
    psql.run_sql(remote, f"DROP DATABASE IF EXISTS bench_by_hand;\nDROP DATABASE IF EXISTS app_{into.replace('-', '_')};\n"
                         f"DROP ROLE IF EXISTS app_{into.replace('-', '_')};\nDROP DATABASE IF EXISTS {DB};\n")
    remote.run(["rm", "-rf", "--", f"dallinger-data/backups/{APP}", f"dallinger-data/backups/{into}"])
    remote.close()


if __name__ == "__main__":
    main()
