"""Each app's own PostgreSQL role and database, with a connection limit.

One app can then no longer exhaust the shared server's connections (the seed's known issue).
The password is generated here and only its SCRAM verifier goes into the SQL, which travels
on psql's stdin: the clear password is never in a command line or a server log, only in the
app's 0600 secrets file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from . import layout
from .. import names
from ..errors import Remedy, ValidationError

DEFAULT_CONNECTION_LIMIT = 20  # per app; PostgreSQL's default max_connections is 100
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default
POSTGRES_HOST = "postgresql"  # the shared service's name on the `dallinger` network


def random_password() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: goes into DATABASE_URL unescaped


def connection_limit(value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"The connection limit {value!r} is not a number.",
                              f"Use a whole number such as {DEFAULT_CONNECTION_LIMIT}.",
                              code="invalid.connection_limit") from None
    if not 2 <= n <= 1000:
        raise ValidationError(f"The connection limit {n} is out of range.",
                              "Use between 2 and 1000; keep the sum over all apps below the server's "
                              "max_connections (100 by default).", code="invalid.connection_limit")
    return n


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802 / 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def provision_sql(app: str, verifier: str, limit: int = DEFAULT_CONNECTION_LIMIT) -> str:
    """psql script: create (or update) the app's role and database. Idempotent, so a rerun
    after a failed deploy works. Only the app's role may connect to its database."""
    ident = names.db_identifier(app)  # validated: [a-z0-9_] only
    limit = connection_limit(limit)
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise ValidationError("Only a SCRAM verifier may be used here.", code="invalid.verifier",
                              remedy=Remedy("database.scram_verifier"))
    return "\n".join([
        f"SELECT 'CREATE ROLE {ident} LOGIN' WHERE NOT EXISTS "
        f"(SELECT FROM pg_roles WHERE rolname = {_literal(ident)})\\gexec",
        f"ALTER ROLE {ident} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"CONNECTION LIMIT {limit} PASSWORD {_literal(verifier)};",
        f"SELECT 'CREATE DATABASE {ident} OWNER {ident}' WHERE NOT EXISTS "
        f"(SELECT FROM pg_database WHERE datname = {_literal(ident)})\\gexec",
        f"ALTER DATABASE {ident} OWNER TO {ident};",
        f"REVOKE ALL ON DATABASE {ident} FROM PUBLIC;",
        f"GRANT ALL ON DATABASE {ident} TO {ident};",
        "",
    ])


def drop_sql(app: str) -> str:
    """psql script: end the app's sessions, drop its database and roles (destroy with data)."""
    ident = names.db_identifier(app)
    return "\n".join([
        f"SELECT 'ALTER DATABASE {ident} CONNECTION LIMIT 0' WHERE EXISTS "
        f"(SELECT FROM pg_database WHERE datname = {_literal(ident)})\\gexec",
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_literal(ident)};",
        f"DROP DATABASE IF EXISTS {ident};",
        f"DROP ROLE IF EXISTS {ident};",
        f"DROP ROLE IF EXISTS {reader_role(app)};",  # its grants went with the database
        "",
    ])


# ---------------------------------------------------------------------------- the read-only role

READER_CONNECTION_LIMIT = 4  # query() opens one connection per call


def reader_role(app: str) -> str:
    """The role labdeploy's query() reads an app's data as: `<db>__ro`. App names never hold
    "--", so no app's own role can have this name."""
    return names.db_identifier(app) + "__ro"


def reader_password(app: str, app_password: str) -> str:
    """The read-only role's password, derived from the app's own (nothing more to store, and
    concurrent queries agree on it). Whoever knows it knows the app's password already."""
    mac = hmac.new(app_password.encode(), b"labdeploy read-only role " + reader_role(app).encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def reader_sql(app: str, verifier: str) -> str:
    """psql script, run as the superuser in the app's database: make (or refresh) the app's
    read-only role. It may connect and SELECT from every table of the app (now and, through
    default privileges, tables the app creates later), nothing else; its sessions start
    read-only. Idempotent: query() runs it before each query, so tables made in schemas
    created since are covered too."""
    ident = names.db_identifier(app)
    ro = reader_role(app)
    if not verifier.startswith("SCRAM-SHA-256$"):
        raise ValidationError("Only a SCRAM verifier may be used here.", code="invalid.verifier",
                              remedy=Remedy("database.scram_verifier"))
    schemas = ("SELECT nspname FROM pg_namespace WHERE nspname <> 'information_schema' "
               "AND nspname NOT LIKE 'pg\\_%'")
    return "\n".join([
        f"SELECT 'CREATE ROLE {ro}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(ro)})\\gexec",
        f"ALTER ROLE {ro} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS "
        f"CONNECTION LIMIT {READER_CONNECTION_LIMIT} PASSWORD {_literal(verifier)};",
        f"ALTER ROLE {ro} SET default_transaction_read_only = on;",
        f"ALTER ROLE {ro} SET search_path = {ident}, public;",  # what the app's own role sees unqualified
        f"GRANT CONNECT ON DATABASE {ident} TO {ro};",
        f"SELECT format('GRANT USAGE ON SCHEMA %I TO {ro}', nspname) FROM ({schemas}) s\\gexec",
        f"SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {ro}', nspname) FROM ({schemas}) s\\gexec",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {ident} GRANT SELECT ON TABLES TO {ro};",
        "",
    ])


def exists_sql(app: str) -> str:
    """One row, one column: 1 if the app's database exists, else 0."""
    ident = names.db_identifier(app)
    return f"SELECT count(*) FROM pg_database WHERE datname = {_literal(ident)};"


def database_url(app: str, password: str, *, pooler: bool = False) -> str:
    """How the app's containers reach their database: over the shared `dallinger` network,
    or, with `pooler`, through the app's own PgBouncer (labdeploy.pooler), which holds the
    connections to PostgreSQL. Same role, password and database either way."""
    ident = names.db_identifier(app)
    if pooler:
        return f"postgresql://{ident}:{password}@{layout.pooler_alias(app)}:{layout.POOLER_PORT}/{ident}"
    return f"postgresql://{ident}:{password}@{POSTGRES_HOST}:5432/{ident}"


REDIS_URL = "redis://redis:6379/0"  # the app's own redis service


def parse_database_url(url: str) -> dict:
    """The parts of a DATABASE_URL as database_url() writes it: user, password, host, port,
    database (the one parser of it; "" for what is missing)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit((url or "").strip().strip('"').strip("'"))
    return {"user": unquote(parts.username or ""), "password": unquote(parts.password or ""),
            "host": parts.hostname or "", "port": parts.port or 5432, "database": parts.path.lstrip("/")}
