"""Where things live on the server. Paths are relative to the login user's home.

The layout keeps the seed's debugging instructions working (`cd ~/dallinger/<app> &&
docker compose logs`, `cd ~/dallinger && docker compose exec postgresql psql -U dallinger`).
"""

from __future__ import annotations

from .. import names

ROOT = "dallinger"
DATA_ROOT = "dallinger-data"
STACK_PROJECT = "dallinger"
NETWORK = "dallinger"
POSTGRES_CONTAINER = "dallinger-postgresql"
CADDY_CONTAINER = "dallinger-caddy"
POSTGRES_SUPERUSER = "dallinger"
APP_SERVICES = ("web", "worker", "clock", "redis")
PROCESS_SERVICES = ("web", "worker", "clock")
WEB_PORT = 5000  # Dallinger's contract: the web process listens on $PORT, 5000
POOLER_SERVICE = "pgbouncer"  # each app's own connection pooler (labdeploy.server.pooler)
POOLER_PORT = 6432  # PgBouncer's usual port, so a `psql -p 6432` habit works


def stack_compose() -> str:
    return f"{ROOT}/docker-compose.yml"


def caddyfile() -> str:
    return f"{ROOT}/Caddyfile"


def caddy_dir() -> str:
    return f"{ROOT}/caddy.d"


# Certificates Caddy trusts (the ACME server's CA root): a folder mounted read-only. The dot
# keeps it apart from app folders (no app name has one).
CADDY_TRUST = "caddy.trust"


def caddy_trust_dir() -> str:
    return f"{ROOT}/{CADDY_TRUST}"


def caddy_site(app: str) -> str:
    return f"{ROOT}/caddy.d/{names.app_name(app)}"


def secrets_dir() -> str:
    return f"{ROOT}/secrets"


def postgres_password_file() -> str:
    return f"{ROOT}/secrets/postgres_password"


def stack_state() -> str:
    return f"{ROOT}/stack.json"


def app_dir(app: str) -> str:
    return f"{ROOT}/{names.app_name(app)}"


def app_compose(app: str) -> str:
    return f"{app_dir(app)}/docker-compose.yml"


def app_secrets(app: str) -> str:
    return f"{app_dir(app)}/secrets.env"


def app_state(app: str) -> str:
    return f"{app_dir(app)}/deploy.json"


def app_history(app: str) -> str:
    return f"{app_dir(app)}/history.jsonl"


def build_dir(app: str) -> str:
    """Where the server keeps the app's build context and a pull's private registry login."""
    return f"{ROOT}/.build/{names.app_name(app)}"


def locks_dir() -> str:
    return f"{ROOT}/.locks"


def app_lock(app: str) -> str:
    return f"{ROOT}/.locks/{names.app_name(app)}"


def app_data(app: str) -> str:
    return f"{DATA_ROOT}/{names.app_name(app)}"


def pooler_alias(app: str) -> str:
    """The app's pooler's name on the networks: unique per app (every app has a "pgbouncer")."""
    return f"{names.app_name(app)}-{POOLER_SERVICE}"


def web_alias(app: str) -> str:
    """The web service's name on the shared network; Caddy proxies to it."""
    return f"{names.app_name(app)}-web"


# The backup service (labdeploy.server.backupservice): a container of the shared stack.
BACKUP_CONTAINER = "dallinger-backup"
BACKUP_APPLICATION_NAME = "labdeploy-backup"  # its PostgreSQL connections, told apart in pg_activity
BACKUPS_ROOT = f"{DATA_ROOT}/backups"  # "backups" is a reserved app name: never an app's data folder


def backup_script_dir() -> str:
    return f"{ROOT}/backup"


def backup_settings(app: str | None = None) -> str:
    """The server's default backup schedule, or one app's (its own wins)."""
    return f"{app_dir(app)}/backup.conf" if app else f"{ROOT}/backup.conf"


def app_backups(app: str) -> str:
    return f"{BACKUPS_ROOT}/{names.app_name(app)}"
