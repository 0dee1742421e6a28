"""Export speed and memory: labdeploy's export vs the plain-shell way vs pandas.read_sql.

A responses table shaped like the example experiment's (integers, text, booleans, a float,
timestamptz, JSONB) with 1,000,000 rows (~100 MB as CSV) in a database on the testbed server,
read into a DataFrame three ways, each in a fresh process (so peak memory is its own):

  labdeploy   export(app, server, tables=["responses"]): COPY over the SSH connection, parsed
              while it streams, typed, row count verified in one snapshot
  shell (a)   ssh server "docker exec ... psql -c '\\copy responses to stdout csv header'" > file,
              then pandas.read_csv(file)   (untyped: timestamps and JSON stay text)
  read_sql (b) pandas.read_sql over an SSH tunnel (SQLAlchemy + psycopg)

Targets: labdeploy within 1.3x of (a), at least 3x faster than (b), peak memory below 3x the
DataFrame's own size. At each network profile (`--profiles lan,wan`, bench/wan.py: the WAN one
puts 50 ms each way and 20 Mbit/s between this computer and the server, and counts round
trips); the WAN profile reads --wan-rows rows. The server shares this machine's cores, so wall times move with whatever
else runs; local CPU seconds are printed too, as a steadier figure. Run: .venv/bin/python bench/export.py [--rows N] [--repeats R] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

TESTBED = os.environ.get("LABDEPLOY_TESTBED", "/var/lib/labdeploy-testbed/testbed.json")
APP = os.environ.get("LABDEPLOY_BENCH_APP", "t-exp-bench")  # the children read it too

SCHEMA = """
DROP TABLE IF EXISTS responses;
CREATE TABLE responses (
    id             SERIAL PRIMARY KEY,
    participant_id INTEGER NOT NULL,
    trial          INTEGER NOT NULL,
    word           TEXT NOT NULL,
    ink            TEXT NOT NULL,
    answer         TEXT NOT NULL,
    congruent      BOOLEAN NOT NULL,
    correct        BOOLEAN NOT NULL,
    rt_ms          DOUBLE PRECISION NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    extra          JSONB
);
INSERT INTO responses (participant_id, trial, word, ink, answer, congruent, correct, rt_ms, created_at, extra)
SELECT g / 40 + 1, g % 40, (ARRAY['red','green','blue','yellow'])[g % 4 + 1],
       (ARRAY['red','green','blue','yellow'])[(g / 4) % 4 + 1], (ARRAY['red','green','blue','yellow'])[(g / 3) % 4 + 1],
       g % 4 = (g / 4) % 4, g % 4 = (g / 3) % 4, 300 + (g::bigint * 7919 % 100000) / 97.0,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1.37 second',
       CASE WHEN g % 50 = 0 THEN NULL ELSE jsonb_build_object('key', chr(97 + g % 26), 'screen', 'w' || (g % 3 + 1)) END
FROM generate_series(1, %d) g;
VACUUM (ANALYZE) responses;  -- sets hint bits, so no method pays for the first scan after the load
"""


def testbed() -> dict:
    with open(TESTBED) as f:
        return json.load(f)


def remote_for(tb: dict, known_hosts: str):
    from labdeploy.remote import Remote

    s = tb["ssh"]
    return Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=known_hosts,
                  use_agent=False).connect()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------------- one method, in a child


def run_labdeploy(tb, kh, db):
    from labdeploy import export

    remote = remote_for(tb, kh)
    return export.export(APP, remote, tables=["responses"])["responses"]


def run_shell(tb, kh, db):
    import pandas as pd

    s = tb["ssh"]
    inner = f"docker exec dallinger-postgresql psql -U dallinger -d {db} -c " + shlex.quote(
        "\\copy responses to stdout csv header")
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        subprocess.run(["ssh", "-i", s["key"], "-o", f"UserKnownHostsFile={kh}", "-o", "BatchMode=yes",
                        "-p", str(s["port"]), f"{s['user']}@{s['host']}", inner], stdout=f, check=True)
        return pd.read_csv(f.name)


def run_read_sql(tb, kh, db):
    import pandas as pd
    import sqlalchemy as sa

    from labdeploy import export

    remote = remote_for(tb, kh)
    role, password, database = export._app_credentials(remote, APP)
    with remote.forward(export.postgres_address(remote), 5432) as port:
        engine = sa.create_engine(sa.engine.URL.create("postgresql+psycopg", username=role, password=password,
                                                       host="127.0.0.1", port=port, database=database))
        try:
            return pd.read_sql("SELECT * FROM responses", engine)
        finally:
            engine.dispose()


METHODS = {"labdeploy": run_labdeploy, "shell": run_shell, "read_sql": run_read_sql}


def _cpu() -> float:
    """CPU seconds of this process and its children (ssh for the shell way): a figure that,
    unlike wall time, other work on the machine hardly changes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(method: str, kh: str, db: str) -> None:
    import pandas  # noqa: F401 - imports are not part of the measurement
    import pyarrow  # noqa: F401
    import sqlalchemy  # noqa: F401

    import labdeploy.export  # noqa: F401

    tb = testbed()
    base = rss_mb()
    cpu0 = _cpu()
    t = time.perf_counter()
    df = METHODS[method](tb, kh, db)
    seconds = time.perf_counter() - t
    cpu = _cpu() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = df.memory_usage(index=True, deep=True).sum() / 2**20
    print(json.dumps({"method": method, "seconds": seconds, "cpu": cpu, "rows": len(df), "peak_mb": peak - base,
                      "df_mb": size, "dtypes": {c: str(t) for c, t in df.dtypes.items()}}))


# ---------------------------------------------------------------------------- parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows at the LAN profile")
    ap.add_argument("--wan-rows", type=int, default=100_000,
                    help="rows at the WAN profile (20 Mbit/s: 100,000 rows are ~10 MB, ~4 s on the wire)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profiles", default="lan,wan", help="network profiles, in order (bench/wan.py)")
    ap.add_argument("--keep", action="store_true", help="keep the bench database for another run")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "KNOWN_HOSTS", "DB"))
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wan

    summary = {}
    for profile in wan.profiles(args.profiles):
        with wan.Network(testbed(), profile) as net:
            print(f"--- {profile.describe()}", flush=True)
            rows = args.rows if profile.name == "lan" else args.wan_rows
            summary[profile.name] = run_profile(net, rows, args.repeats, args.keep)
    print("\nside by side (median seconds of each method; round trips per export counted by the WAN relay, "
          "connection included)")
    names_ = list(summary)
    print(f"{'method':<12}" + "".join(f"{p + ' rows':>14}{p + ' s':>9}{p + ' RTs':>10}" for p in names_))
    for m in METHODS:
        print(f"{m:<12}" + "".join(f"{summary[p]['rows']:>14,}{summary[p]['median'][m]:>9.2f}"
                                   f"{summary[p]['trips'][m] if summary[p]['trips'][m] else '-':>10}" for p in names_))


def run_profile(net, n_rows: int, repeats: int, keep: bool) -> dict:
    """Every method `repeats` times at one network profile; prints its table, returns the medians."""
    from labdeploy.app import appcompose
    from labdeploy.server import database, layout, psql
    from labdeploy import names

    tb = net.testbed
    kh = tempfile.NamedTemporaryFile("w", suffix="-known_hosts", delete=False)
    kh.write(tb["ssh"]["known_hosts_line"] + "\n")
    kh.close()
    # The children read the testbed through the profile's relays (a 0600 file: it holds passwords).
    tb_file = tempfile.NamedTemporaryFile("w", suffix="-testbed.json", delete=False)
    json.dump(tb, tb_file)
    tb_file.close()
    env = dict(os.environ, PYTHONWARNINGS="ignore", LABDEPLOY_TESTBED=tb_file.name)
    remote = remote_for(tb, kh.name)
    db = names.db_identifier(APP)
    have = psql.run_sql(remote, "\\pset tuples_only on\n" + database.exists_sql(APP)).strip() == "1"
    rows = -1
    if have:
        try:
            rows = int(psql.run_sql(remote, "\\pset tuples_only on\nSELECT count(*) FROM responses;", db).strip())
        except Exception:
            rows = -1
    if rows != n_rows:
        print(f"preparing {n_rows:,} rows in {db} on {tb['ssh']['host']} ...", flush=True)
        password = database.random_password()
        psql.run_sql(remote, database.provision_sql(APP, database.scram_verifier(password)))
        remote.makedirs(layout.app_dir(APP))
        remote.put_bytes(layout.app_secrets(APP), appcompose.secrets_env(
            {"DATABASE_URL": database.database_url(APP, password)}), mode=0o600)
        psql.run_sql(remote, f"SET ROLE {db};\n" + SCHEMA.replace("%d", str(n_rows)), db, timeout=1200)
    csv_mb = int(psql.run_sql(remote, "\\pset tuples_only on\nSELECT pg_table_size('responses');", db).strip()) / 2**20
    results: dict = {}
    runs: dict = {m: [] for m in METHODS}
    trips: dict = {m: [] for m in METHODS}
    load_before = os.getloadavg()[0]
    try:
        for _ in range(repeats):
            for method in METHODS:
                before = net.counts()
                out = subprocess.run([sys.executable, __file__, "--child", method, kh.name, db], capture_output=True,
                                     text=True, check=True, env=env)
                trips[method].append(sum(net.since(before).values()))
                r = json.loads(out.stdout.strip().splitlines()[-1])
                runs[method].append(r["seconds"])
                best = results.get(method)
                if best is None or r["seconds"] < best["seconds"]:
                    results[method] = r
    finally:
        if not keep:
            psql.run_sql(remote, database.drop_sql(APP))
            remote.run(["rm", "-rf", "--", layout.app_dir(APP)])
        os.unlink(kh.name)
        os.unlink(tb_file.name)
        remote.close()

    print(f"\nresponses: {n_rows:,} rows (table {csv_mb:.0f} MB on disk), best of {repeats} runs, "
          f"each method in a fresh process; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (the testbed server shares them)\n")
    print(f"{'method':<12}{'seconds':>9}{'local CPU s':>13}{'rows':>11}{'DataFrame MB':>14}{'peak MB':>9}"
          f"{'peak/df':>9}{'round trips':>13}")
    for m, r in results.items():
        print(f"{m:<12}{r['seconds']:>9.2f}{r['cpu']:>13.2f}{r['rows']:>11,}{r['df_mb']:>14.0f}{r['peak_mb']:>9.0f}"
              f"{r['peak_mb'] / r['df_mb']:>9.2f}{statistics.median(trips[m]) if net.links else '-':>13}")
    ours, shell, rsql = results["labdeploy"], results["shell"], results["read_sql"]
    med = {m: statistics.median(v) for m, v in runs.items()}
    print("\nall runs (s): " + "; ".join(f"{m} " + ", ".join(f"{x:.2f}" for x in v) for m, v in runs.items()))
    print(f"\nlabdeploy / shell (a):   {ours['seconds'] / shell['seconds']:.2f}x best, "
          f"{med['labdeploy'] / med['shell']:.2f}x median   (target <= 1.3x)")
    print(f"read_sql (b) / labdeploy: {rsql['seconds'] / ours['seconds']:.2f}x best, "
          f"{med['read_sql'] / med['labdeploy']:.2f}x median   (target >= 3x)")
    print(f"local CPU: labdeploy / shell {ours['cpu'] / shell['cpu']:.2f}x, read_sql / labdeploy "
          f"{rsql['cpu'] / ours['cpu']:.2f}x")
    print(f"labdeploy peak memory / DataFrame: {ours['peak_mb'] / ours['df_mb']:.2f}   (target < 3)")
    print("\ndtypes:")
    for m, r in results.items():
        print(f"  {m:<10} " + ", ".join(f"{c}={t}" for c, t in r["dtypes"].items()))
    return {"rows": n_rows, "median": med,
            "trips": {m: statistics.median(v) if net.links else 0 for m, v in trips.items()}}


if __name__ == "__main__":
    main()
