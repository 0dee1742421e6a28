"""An app's Caddy site block (~/dallinger/caddy.d/<app>), built as text from data."""

from __future__ import annotations

from typing import Optional

from . import layout, names
from .appcompose import WEB_PORT
from .stack import StackSettings, is_local_domain, site_address


def site_block(app: str, settings: StackSettings) -> str:
    """`<app>.<domain>` proxied to the app's web container on the shared network.

    `http://<app>.localhost` is always an address too, so a tunnel (apps.open_tunnel) opens
    the app before DNS is set up. Real domains get automatic HTTPS from Let's Encrypt (with the contact email when one is
    set); local and test domains are plain HTTP, since no certificate can be had for them.
    """
    settings.validate()
    app = names.app_name(app)
    addresses = [site_address(app, settings)]
    tunnel = f"http://{app}.localhost"  # what an SSH tunnel from a researcher's browser asks for
    if tunnel not in addresses:
        addresses.append(tunnel)
    lines = [f"# Written by labdeploy for the app {app}.", f"{', '.join(addresses)} {{"]
    if not is_local_domain(settings.domain) and settings.email:
        lines.append(f"\ttls {settings.email}")
    lines += [
        "\tencode gzip",
        f"\treverse_proxy {layout.web_alias(app)}:{WEB_PORT}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def app_url(app: str, settings: Optional[StackSettings]) -> str:
    """The address participants use."""
    settings = settings or StackSettings(domain="localhost")
    domain = settings.domain or "localhost"
    host = f"{names.app_name(app)}.{domain}"
    if is_local_domain(domain):
        port = int(settings.http_port)
        return f"http://{host}" + ("" if port == 80 else f":{port}") + "/"
    port = int(settings.https_port)
    return f"https://{host}" + ("" if port == 443 else f":{port}") + "/"
