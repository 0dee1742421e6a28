"""An app's Caddy site block (~/dallinger/caddy.d/<app>), built as text from data."""

from __future__ import annotations

import re
from typing import Optional

from . import layout
from .. import names
from .stack import StackSettings, caddy_token, is_local_domain, private_log, site_address


# Each request as one JSON line on Caddy's stderr (bounded by Docker's log rotation), for the
# alert watcher's web error rate; only what identifies no participant stays (stack.private_log).
ACCESS_LOG = private_log()


def site_block(app: str, settings: StackSettings) -> str:
    """`<app>.<domain>` proxied to the app's web container on the shared network.

    `http://<app>.localhost` is always an address too, so a tunnel (apps.open_tunnel) opens
    the app before DNS is set up. Real domains get automatic HTTPS from the stack's ACME CA (Let's
    Encrypt unless it names another), with the contact email when one is set; local and test
    domains are plain HTTP, since no certificate can be had for them.
    """
    settings.validate()
    app = names.app_name(app)
    addresses = [site_address(app, settings)]
    tunnel = f"http://{app}.localhost"  # what an SSH tunnel from a researcher's browser asks for
    if tunnel not in addresses:
        addresses.append(tunnel)
    # Every value is checked once more as it is written: one that slipped past validation
    # must not be able to add a directive, a line or a second site block.
    addresses = [caddy_token(a, "site address") for a in addresses]
    lines = [f"# Written by labdeploy for the app {caddy_token(app, 'app name')}.", f"{', '.join(addresses)} {{"]
    if not is_local_domain(settings.domain) and settings.email:
        lines.append(f"\ttls {caddy_token(settings.email, 'contact email')}")
    lines += ACCESS_LOG + [
        "\tencode gzip",
        f"\treverse_proxy {caddy_token(f'{layout.web_alias(app)}:{layout.WEB_PORT}', 'upstream')}",
        "}",
    ]
    return "\n".join(lines) + "\n"


_PROXY_LINE = re.compile(r"^(\treverse_proxy )(\S+)$", re.M)


def site_upstream(site_text: Optional[str]) -> Optional[str]:
    """The container name (or alias) the site proxies to, without the port; None without a site."""
    m = _PROXY_LINE.search(site_text or "")
    return m.group(2).rsplit(":", 1)[0] if m else None


def with_upstream(site_text: str, upstream: str) -> str:
    """The same site (addresses, TLS) proxied to `upstream` instead: one web container by its
    name while a switch runs (the alias would spread requests over the old and the new one),
    the alias again afterwards."""
    target = caddy_token(f"{upstream}:{layout.WEB_PORT}", "upstream")
    text, n = _PROXY_LINE.subn(lambda m: m.group(1) + target, site_text, count=1)
    if n != 1:
        raise ValueError("the site file has no reverse_proxy line written by labdeploy")
    return text


def app_url(app: str, settings: Optional[StackSettings]) -> str:
    """The address participants use."""
    settings = settings or StackSettings(domain="localhost")
    domain = names.domain(settings.domain) if settings.domain else "localhost"
    host = f"{names.app_name(app)}.{domain}"
    if is_local_domain(domain):
        port = int(settings.http_port)
        return f"http://{host}" + ("" if port == 80 else f":{port}") + "/"
    port = int(settings.https_port)
    return f"https://{host}" + ("" if port == 443 else f":{port}") + "/"
