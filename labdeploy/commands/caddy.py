"""The shared Caddy: read its configuration again."""

from __future__ import annotations

from ..server import layout


def reload(container: str = layout.CADDY_CONTAINER, config: str = "/etc/caddy/Caddyfile") -> list[str]:
    """Make Caddy read the Caddyfile (and caddy.d/*) again; a bad file is refused, the old
    configuration stays live."""
    return ["docker", "exec", container, "caddy", "reload", "--config", config, "--adapter", "caddyfile"]
