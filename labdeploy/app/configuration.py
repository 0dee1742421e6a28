"""An app's configuration and secrets: one rule for every source.

Configuration comes from config.txt, ~/.dallingerconfig, `--config`, the panel and the API.
A key whose name says secret goes to the app's 0600 secrets file wherever it came from, so
the compose file (0644) never holds one; a secret stays across updates until it is unset
explicitly. Values are shown masked until asked for.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from ..errors import ValidationError
from ..experiment import dallinger
from ..server import database
from . import appcompose

# Secrets deploy writes itself: a caller's value would cut the app off its database or queue.
MANAGED_SECRETS = frozenset({"DATABASE_URL", "REDIS_URL"})
DEFAULT_DASHBOARD_USER = "admin"


class Secret:
    """A secret value that shows itself masked (repr, str, notebook output) until revealed."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('••••••••')"

    def __str__(self) -> str:
        return "••••••••"

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def split_config(config: Optional[Mapping[str, str]], secrets: Optional[Mapping[str, str]]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret): config keys whose names say secret join the secrets."""
    plain: dict[str, str] = {}
    secret = {appcompose.env_key(k): str(v) for k, v in (secrets or {}).items()}
    for key, value in (config or {}).items():
        appcompose.env_key(key)
        (secret if dallinger.is_sensitive(key) else plain)[key] = str(value)
    managed = sorted(MANAGED_SECRETS & set(secret))
    if managed:
        raise ValidationError(f"{', '.join(managed)} can't be set: labdeploy writes it for the app's own "
                              "database and Redis.", "Leave it out of the configuration.",
                              code="invalid.managed_secret")
    appcompose.secrets_env(secret)  # refuse values that can't be stored, before anything changes
    return plain, secret


def check_unset(names_: Sequence[str]) -> list[str]:
    """Secrets a deploy is asked to remove: environment names, never the managed ones."""
    unset = [appcompose.env_key(k) for k in names_]
    managed = sorted(MANAGED_SECRETS & set(unset))
    if managed:
        raise ValidationError(f"{', '.join(managed)} can't be unset: the app needs it to reach its database "
                              "and Redis.", "Leave it out of the secrets to remove.",
                              code="invalid.managed_secret")
    return unset


def secret_values(previous: Mapping[str, str], given: Mapping[str, str], unset: Sequence[str]) -> dict[str, str]:
    """The app's secrets after this deploy: the ones it had (a secret stays until it is unset
    explicitly, so an update without it does not silently drop it), then the given ones."""
    values = {k: v for k, v in previous.items() if k not in unset}
    values.update(given)
    return values


def database_password(previous: Mapping[str, str]) -> str:
    """The password in the app's current DATABASE_URL (kept across updates), or ""."""
    return database.parse_database_url(previous.get("DATABASE_URL", ""))["password"]
