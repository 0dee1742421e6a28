#!/bin/sh
# Initialise the cluster on first start, then run the server as the postgres user.
set -eu
if [ "${1:-}" = "postgres" ]; then
    if [ "$(id -u)" = "0" ]; then
        mkdir -p "$PGDATA" /var/run/postgresql
        chown -R postgres:postgres "$PGDATA" /var/run/postgresql
        chmod 0700 "$PGDATA"
        if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
            POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
            export POSTGRES_PASSWORD
            unset POSTGRES_PASSWORD_FILE
        fi
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        user="${POSTGRES_USER:-postgres}"
        pwfile="$(mktemp)"
        printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is required}" > "$pwfile"
        initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
               --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
        rm -f "$pwfile"
        echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
        echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
        db="${POSTGRES_DB:-$user}"
        if [ "$db" != "postgres" ]; then
            postgres --single -D "$PGDATA" -j postgres >/dev/null <<SQL
CREATE DATABASE "$db";
SQL
        fi
    fi
    unset POSTGRES_PASSWORD
fi
exec "$@"
