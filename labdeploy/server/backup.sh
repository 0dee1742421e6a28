#!/bin/sh
# labdeploy's backup service: runs inside the shared stack's `backup` container (the
# PostgreSQL image, as the server's login user) and, on demand, through `docker exec`.
# Written by labdeploy; prepare() replaces it. POSIX sh and coreutils only.
#
#   backup.sh serve                 every $BACKUP_TICK seconds: due backups, retention, drills
#   backup.sh tick                  one round of that (BACKUP_NOW=<epoch> stands in for the clock)
#   backup.sh once APP KIND         one backup now (KIND: scheduled, manual, pre-restore)
#   backup.sh drill APP [ID]        restore a backup into a scratch database and count its rows
#   backup.sh counts DB             the row counts of a database, as the manifests hold them
#   backup.sh restore FILE DB ROLE  a dump into a new database DB owned by ROLE, then its counts
#
# Layout (relative to the login user's home; /dallinger and /backups in here):
#   ~/dallinger/<app>/deploy.json            an app is backed up while it is deployed
#   ~/dallinger/backup.conf, <app>/backup.conf   every_minutes=60|off, keep_hourly=24, keep_daily=14
#   ~/dallinger-data/backups/<app>/<ID>.<kind>.dump + .json   a backup and its manifest
#   ~/dallinger-data/backups/<app>/runs.jsonl, drills.jsonl    every attempt and drill, kept
# A manifest is written last: a dump without one is not a backup (and is removed).
set -u
umask 077
trap '' PIPE  # a reader that died (psql after PostgreSQL went away) must not kill the run before it is recorded

CONF=${BACKUP_CONF:-/dallinger}   # overridable for the script's own tests
STORE=${BACKUP_STORE:-/backups}
TICK=${BACKUP_TICK:-60}
RETRY=${BACKUP_RETRY:-300}   # seconds before a failed scheduled run is tried again
DRILL_EVERY=${BACKUP_DRILL_EVERY:-86400}
export PGHOST=${PGHOST:-postgresql} PGUSER=${PGUSER:-dallinger} PGDATABASE=${PGDATABASE:-dallinger}

# Row counts of every table, in the transaction's snapshot: one line "rows:{...}" with the
# tables in name order, so two counts compare as text.
COUNT_SQL="SELECT 'rows:' || coalesce(json_object_agg(t.name, t.n ORDER BY t.name)::text, '{}') FROM (
 SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END AS name,
  (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname),
   false, true, '')))[1]::text::bigint AS n
 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%') t;"

# A connection string for database $1 whose connection notices a PostgreSQL that vanished
# (a killed container sends no reset): without keepalives a dump would wait forever.
# Named, so pg_activity tells them from the app's own (they are the superuser's, not the app role's).
conn() { printf 'dbname=%s application_name=labdeploy-backup keepalives=1 keepalives_idle=10 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=30000' "$1"; }

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Text safe inside a JSON string: no quotes, backslashes or control characters.
clean() { printf '%s' "$1" | tr '\n\t' '  ' | tr -cd 'A-Za-z0-9 .,:;_/()=+@<>#%*?!-' | cut -c1-600; }

valid_app() { case "$1" in ""|*[!a-z0-9-]*|[!a-z]*) return 1;; esac; return 0; }

ident_of() { printf 'app_%s' "$(printf '%s' "$1" | tr '-' '_')"; }

# Password for the superuser from the stack's 0600 secret, in a 0600 file only this process reads.
passfile() {
    if [ -z "${PGPASSFILE:-}" ]; then
        PGPASSFILE=$(mktemp /tmp/pgpass.XXXXXX)
        printf '*:*:*:%s:%s\n' "$PGUSER" "$(cat "$CONF/secrets/postgres_password")" >"$PGPASSFILE"
        export PGPASSFILE
        trap 'rm -f "$PGPASSFILE"' EXIT
    fi
}

setting() {  # setting APP KEY DEFAULT: the app's backup.conf, else the server's, else DEFAULT
    for f in "$CONF/$1/backup.conf" "$CONF/backup.conf"; do
        if [ -f "$f" ]; then
            v=$(sed -n "s/^$2=\\([a-z0-9]*\\)\$/\\1/p" "$f" | tail -n 1)
            if [ -n "$v" ]; then printf '%s' "$v"; return; fi
        fi
    done
    printf '%s' "$3"
}

number() { case "$1" in ""|*[!0-9]*) printf '%s' "$2";; *) printf '%s' "$1";; esac; }

app_version() {
    grep -o '"version": *"[A-Za-z0-9._:+-]*"' "$CONF/$1/deploy.json" 2>/dev/null | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'
}

record() {  # record FILE JSON-FIELDS: one line per event, the file kept to its last 2000 lines
    printf '{%s}\n' "$2" >>"$1"
    if [ "$(wc -l <"$1")" -gt 2000 ]; then
        tail -n 1000 "$1" >"$1.tmp" && mv "$1.tmp" "$1"
    fi
}

# dump_and_count DB FILE ROWS: pg_dump --format=custom to FILE and the row counts to ROWS,
# both read in one exported snapshot. Sets DUMP_ERROR on failure.
dump_and_count() {
    work=$(mktemp -d /tmp/backup.XXXXXX)
    mkfifo "$work/in"
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$(conn "$1")" <"$work/in" >"$work/out" 2>"$work/err" &
    reader=$!
    exec 3>"$work/in"
    printf '%s\n' "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;" \
        "SELECT 'snap:' || pg_export_snapshot();" "$COUNT_SQL" >&3
    waited=0
    while ! grep -q '^rows:' "$work/out" 2>/dev/null; do
        if ! kill -0 "$reader" 2>/dev/null || [ "$waited" -gt 1200 ]; then
            exec 3>&-; wait "$reader" 2>/dev/null
            DUMP_ERROR="counting rows failed: $(cat "$work/err")"; rm -rf "$work"; return 1
        fi
        sleep 0.1; waited=$((waited + 1))
    done
    snap=$(sed -n 's/^snap://p' "$work/out")
    rc=0
    pg_dump --format=custom --snapshot="$snap" -d "$(conn "$1")" -f "$2" 2>"$work/dump-err" || rc=$?
    printf 'COMMIT;\n' >&3; exec 3>&-; wait "$reader" 2>/dev/null
    if [ "$rc" -ne 0 ]; then
        DUMP_ERROR="pg_dump failed: $(tail -n 3 "$work/dump-err")"; rm -rf "$work"; return 1
    fi
    sed -n 's/^rows://p' "$work/out" >"$3"
    rm -rf "$work"
}

lock_app() {  # lock_app DIR WAIT: the app's backup lock on fd 9 (held until the process ends)
    mkdir -p "$1" && chmod 700 "$1"
    exec 9>"$1/.lock"
    flock -w "$2" 9
}

once() {  # once APP KIND
    app=$1 kind=$2
    valid_app "$app" || { echo "@@failed invalid app name"; return 2; }
    case "$kind" in scheduled|manual|pre-restore) ;; *) echo "@@failed invalid kind"; return 2;; esac
    lock_app "$STORE/$app" 900 || { echo "@@failed another backup of $app is still running"; return 1; }
    backup_locked "$app" "$kind"
}

finish() {  # finish APP KIND ID STARTED ROWS: the manifest beside the dump, then both under their names
    dir="$STORE/$1" tmp="$STORE/$1/.tmp-$3.dump" manifest="$STORE/$1/.tmp-$3.json"
    size=$(wc -c <"$tmp" | tr -d ' ')
    sum=$(sha256sum "$tmp" | cut -d' ' -f1)
    tables=$(printf '%s' "$5" | grep -o '" : ' | wc -l | tr -d ' ')
    {
        printf '{\n  "format": 1,\n  "id": "%s",\n  "app": "%s",\n  "database": "%s",\n' "$3" "$1" "$(ident_of "$1")" &&
        printf '  "time": "%s",\n  "epoch": %s,\n  "kind": "%s",\n' "$(date -u -d "@$4" +%Y-%m-%dT%H:%M:%SZ)" "$4" "$2" &&
        printf '  "size": %s,\n  "sha256": "%s",\n  "version": "%s",\n' "$size" "$sum" "$(app_version "$1")" &&
        printf '  "seconds": %s,\n  "tables": %s,\n  "dump": "%s.%s.dump",\n' "$(($(date +%s) - $4))" "$tables" "$3" "$2" &&
        printf '  "rows": %s\n}\n' "$5"
    } >"$manifest" 2>/dev/null || { DUMP_ERROR="the manifest could not be written (disk full?)"; return 1; }
    [ "$(tail -n 1 "$manifest")" = "}" ] && sync "$manifest" 2>/dev/null ||
        { DUMP_ERROR="the manifest could not be written (disk full?)"; return 1; }
    mv "$tmp" "$dir/$3.$2.dump" || { DUMP_ERROR="the dump could not be renamed"; return 1; }
    # The manifest comes last: a dump without one is no backup.
    mv "$manifest" "$dir/$3.$2.json" || { rm -f "$dir/$3.$2.dump"; DUMP_ERROR="the manifest could not be renamed"; return 1; }
    sync "$dir" 2>/dev/null
    return 0
}

backup_locked() {  # backup_locked APP KIND, with the app's lock held
    app=$1 kind=$2
    dir="$STORE/$app"
    rm -f "$dir"/.tmp-*  # what a killed run left; and a dump whose manifest never came
    for f in "$dir"/*.dump; do [ -f "$f" ] && [ ! -f "${f%.dump}.json" ] && rm -f "$f"; done
    passfile
    db=$(ident_of "$app")
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    while ls "$dir/$stamp".* >/dev/null 2>&1; do sleep 1; stamp=$(date -u +%Y%m%dT%H%M%SZ); done
    started=$(date +%s)
    tmp="$dir/.tmp-$stamp.dump"
    DUMP_ERROR="" rows=""
    if ! psql -X -At -d "$(conn "$PGDATABASE")" -c "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>/dev/null | grep -q 1; then
        DUMP_ERROR="the database $db does not exist or PostgreSQL does not answer"
    else
        if dump_and_count "$db" "$tmp" "$dir/.tmp-$stamp.rows"; then rows=$(cat "$dir/.tmp-$stamp.rows"); fi
        rm -f "$dir/.tmp-$stamp.rows"
    fi
    if [ -n "$rows" ] && sync "$tmp" 2>/dev/null && finish "$app" "$kind" "$stamp" "$started" "$rows"; then
        record "$dir/runs.jsonl" "\"time\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"epoch\": $(date +%s), \"kind\": \"$kind\", \"ok\": true, \"id\": \"$stamp\", \"error\": \"\""
        echo "@@ok $stamp"
        return 0
    fi
    rm -f "$tmp" "$dir/.tmp-$stamp.json"
    [ -n "$DUMP_ERROR" ] || DUMP_ERROR="the dump could not be written to disk"
    record "$dir/runs.jsonl" "\"time\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"epoch\": $(date +%s), \"kind\": \"$kind\", \"ok\": false, \"id\": \"\", \"error\": \"$(clean "$DUMP_ERROR")\""
    echo "@@failed $(clean "$DUMP_ERROR")"
    return 1
}

newest() {  # newest APP [KINDS-GLOB]: the newest backup's ID
    ls "$STORE/$1/" 2>/dev/null | grep -E '^[0-9]{8}T[0-9]{6}Z\.[a-z-]+\.json$' | sort | tail -n 1 | cut -d. -f1
}

manifest_of() { ls "$STORE/$1/$2".*.json 2>/dev/null | head -n 1; }

drill() {  # drill APP [ID] [KIND]
    app=$1 id=${2:-} how=${3:-manual}
    valid_app "$app" || { echo "@@failed invalid app name"; return 2; }
    dir="$STORE/$app"
    [ -n "$id" ] || id=$(newest "$app")
    case "$id" in ""|*[!0-9TZ]*) echo "@@failed no backup of $app to drill"; return 1;; esac
    manifest=$(manifest_of "$app" "$id")
    [ -n "$manifest" ] || { echo "@@failed no backup $id of $app"; return 1; }
    dump="$dir/$(sed -n 's/^  "dump": "\(.*\)",$/\1/p' "$manifest")"
    want_sum=$(sed -n 's/^  "sha256": "\([0-9a-f]*\)",$/\1/p' "$manifest")
    want_rows=$(sed -n 's/^  "rows": //p' "$manifest")
    passfile
    exec 8>"$dir/.drill-lock"
    flock -w 900 8 || { echo "@@failed another drill of $app is still running"; return 1; }
    # Whole, never cut: a cut name could be another app's scratch database (16 + at most 44 < 63).
    scratch="labdeploy_drill_$(ident_of "$app")"
    ok=false detail=""
    if [ "$(sha256sum "$dump" 2>/dev/null | cut -d' ' -f1)" != "$want_sum" ]; then
        detail="the dump's checksum does not match its manifest (the file is damaged)"
    else
        psql -X -q -d "$(conn "$PGDATABASE")" -c "DROP DATABASE IF EXISTS $scratch" 2>/dev/null
        if ! err=$(psql -X -q -v ON_ERROR_STOP=1 -d "$(conn "$PGDATABASE")" -c "CREATE DATABASE $scratch" 2>&1); then
            detail="could not make a scratch database: $err"
        elif ! err=$(pg_restore --no-owner --no-privileges --exit-on-error -d "$(conn "$scratch")" "$dump" 2>&1); then
            detail="pg_restore failed: $(printf '%s' "$err" | tail -n 3)"
        else
            got=$(psql -X -q -At -d "$(conn "$scratch")" -c "$COUNT_SQL" 2>&1 | sed -n 's/^rows://p')
            if [ "$got" = "$want_rows" ]; then
                ok=true detail="restored; row counts match the manifest"
            else
                detail="row counts differ from the manifest: restored $got"
            fi
        fi
        psql -X -q -d "$(conn "$PGDATABASE")" -c "DROP DATABASE IF EXISTS $scratch" >/dev/null 2>&1
    fi
    record "$dir/drills.jsonl" "\"time\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"epoch\": $(date +%s), \"id\": \"$id\", \"how\": \"$how\", \"ok\": $ok, \"detail\": \"$(clean "$detail")\""
    if [ "$ok" = true ]; then echo "@@ok $id $(clean "$detail")"; return 0; fi
    echo "@@failed $(clean "$detail")"; return 1
}

restore_into() {  # restore_into FILE DB ROLE: DB must not exist yet
    file=$1 db=$2 role=$3
    case "$db$role" in *[!a-z0-9_]*) echo "@@failed invalid database or role name"; return 2;; esac
    case "$file" in "$STORE"/*.dump) ;; *) echo "@@failed not a dump under $STORE"; return 2;; esac
    case "$file" in *..*) echo "@@failed not a dump under /backups"; return 2;; esac
    [ -f "$file" ] || { echo "@@failed no such dump"; return 1; }
    passfile
    if ! err=$(psql -X -q -v ON_ERROR_STOP=1 -d "$(conn "$PGDATABASE")" -c "CREATE DATABASE $db OWNER $role" 2>&1); then
        echo "@@failed could not make the database: $(clean "$err")"; return 1
    fi
    if ! err=$(pg_restore --no-owner --no-privileges --role="$role" --exit-on-error -d "$(conn "$db")" "$file" 2>&1); then
        psql -X -q -d "$(conn "$PGDATABASE")" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
        echo "@@failed pg_restore failed: $(clean "$(printf '%s' "$err" | tail -n 3)")"; return 1
    fi
    echo "@@ok $(psql -X -q -At -d "$(conn "$db")" -c "$COUNT_SQL" | sed -n 's/^rows://p')"
}

prune() {  # prune APP: keep the newest scheduled backup of each of the last N hours and M days
    dir="$STORE/$1"
    hourly=$(number "$(setting "$1" keep_hourly 24)" 24)
    daily=$(number "$(setting "$1" keep_daily 14)" 14)
    ls "$dir/" 2>/dev/null | grep -E '^[0-9]{8}T[0-9]{6}Z\.scheduled\.json$' | sort -r |
        awk -v h="$hourly" -v d="$daily" '{
            hour = substr($0, 1, 11); day = substr($0, 1, 8); keep = 0
            if (!(hour in hours) && nh < h) { hours[hour] = 1; nh++; keep = 1 }
            if (!(day in days) && nd < d) { days[day] = 1; nd++; keep = 1 }
            if (!keep) print substr($0, 1, 16)
        }' |
        while read -r id; do
            rm -f "$dir/$id.scheduled.json" "$dir/$id.scheduled.dump"
        done
}

last_epoch() {  # last_epoch FILE: the epoch in a one-number state file, else 0
    number "$(cat "$1" 2>/dev/null)" 0
}

tick_app() {  # tick_app APP NOW: a due backup (then retention) and a due drill, in a subshell
    app=$1 now=$2
    every=$(setting "$app" every_minutes 60)
    [ "$every" = off ] && return 0
    every=$(number "$every" 60)
    [ "$every" -ge 1 ] || return 0
    dir="$STORE/$app"
    # The decision is taken under the app's lock, so a manual backup or a second tick running
    # meanwhile can never make it run twice.
    lock_app "$dir" 0 || return 0
    last_ok=0
    id=$(newest "$app")
    if [ -n "$id" ]; then
        last_ok=$(number "$(sed -n 's/^  "epoch": \([0-9]*\),$/\1/p' "$(manifest_of "$app" "$id")")" 0)
    fi
    retry=$RETRY; [ "$retry" -le $((every * 60)) ] || retry=$((every * 60))
    # After a failed run, wait `retry` seconds before the next try (not a whole interval).
    if [ $((now - last_ok)) -ge $((every * 60)) ] && [ $((now - $(last_epoch "$dir/.last-failure"))) -ge "$retry" ]; then
        if out=$(backup_locked "$app" scheduled 2>&1); then
            rm -f "$dir/.last-failure"
            prune "$app"
        else
            printf '%s\n' "$now" >"$dir/.last-failure"
        fi
        log "$app: $out"
    fi
    exec 9>&-  # the drill has a lock of its own: a backup asked for meanwhile need not wait for it
    if [ -n "$(newest "$app")" ] && [ $((now - $(last_epoch "$dir/.last-drill"))) -ge "$DRILL_EVERY" ]; then
        printf '%s\n' "$now" >"$dir/.last-drill"
        log "$app drill: $(drill "$app" "" scheduled 2>&1)"
    fi
}

tick() {  # every deployed app; BACKUP_NOW (seconds) stands in for the clock in tests
    now=${BACKUP_NOW:-$(date +%s)}
    for state in "$CONF"/*/deploy.json; do
        [ -f "$state" ] || continue
        app=$(basename "$(dirname "$state")")
        valid_app "$app" || continue
        ( tick_app "$app" "$now" )
    done
}

case "${1:-}" in
    serve)
        trap 'exit 0' TERM INT
        passfile
        log "backup service started (every ${TICK}s)"
        while :; do
            tick
            sleep "$TICK" & wait $!
        done ;;
    once) once "${2:-}" "${3:-manual}" ;;
    tick) passfile; tick ;;
    drill) drill "${2:-}" "${3:-}" "${4:-manual}" ;;
    restore) restore_into "${2:-}" "${3:-}" "${4:-}" ;;
    counts) case "${2:-}" in ""|*[!a-z0-9_]*) exit 2;; esac; passfile; psql -X -q -At -d "$(conn "${2:-}")" -c "$COUNT_SQL" | sed -n 's/^rows:/@@ok /p' ;;
    prune) valid_app "${2:-}" && prune "$2" ;;
    *) echo "usage: backup.sh serve | once APP KIND | drill APP [ID] | counts DB | prune APP" >&2; exit 2 ;;
esac
