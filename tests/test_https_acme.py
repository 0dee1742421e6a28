"""HTTPS through a real ACME exchange (issue 19): the testbed's Pebble is the CA.

The server's shared stack is prepared with Pebble's directory and the CA root of Pebble's own
listener, under a domain labdeploy serves over HTTPS (a fresh subdomain per run, so no
certificate from an earlier Pebble, whose roots change at each start, is found in Caddy's
storage). Pebble's mock DNS (pebble-challtestsrv) answers the test names with the server's
address; Caddy on the server proves them over HTTP-01 or TLS-ALPN-01. The researcher's side
connects to the server's address with the app's name as SNI and Host: no /etc/hosts edits.

These tests change the stack's domain, which every app on that server sees, so they run on
the trixie server (SERVER) and put the stack's previous settings back afterwards. Its
/etc/resolv.conf must name the testbed's resolver (testbed.json acme.resolver), which sends
the test domain to the mock DNS: the DNS readiness check resolves names on the server.
"""

from __future__ import annotations

import http.client
import secrets
import socket
import ssl
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from deploy_support import EXAMPLE, deploy_kwargs, destroy_if_deployed
from labdeploy.app import deploy
from labdeploy.remote import Remote
from labdeploy.server import layout, readiness, stack

SERVER = "trixie"  # the testbed server these tests use (one line to switch)
CERT_WAIT = 120  # seconds Caddy may take to get a certificate on a busy 2-core machine
ELSEWHERE = "198.51.100.7"  # TEST-NET-2: an address DNS may name, where nothing answers


@pytest.fixture(scope="module")
def target(testbed) -> dict:
    """The details (ssh, http, images, acme) of the server these tests use, as one dict."""
    if "file" in testbed and testbed.get("flavour") != SERVER:
        # conftest's view of one server (the suite runs once per server): only SERVER's run counts.
        pytest.skip(f"these tests change the shared stack's domain: they run on the {SERVER} server only")
    if "acme" not in testbed:
        pytest.fail("The testbed has no ACME test CA: run `sudo scripts/testbed up` again.", pytrace=False)
    servers = testbed.get("servers", {})
    if testbed.get("flavour") != SERVER and SERVER not in servers:
        pytest.fail(f"The testbed has no {SERVER} server: run `sudo scripts/testbed up` again.", pytrace=False)
    return {**testbed, **servers.get(SERVER, {})}


@pytest.fixture(scope="module")
def acme_remote(target, tmp_path_factory):
    s = target["ssh"]
    kh = tmp_path_factory.mktemp("acme-kh") / "known_hosts"
    kh.write_text(s["known_hosts_line"] + "\n")
    r = Remote(s["host"], s["port"], s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
    r.connect()
    yield r
    r.close()


def fresh_email(user: str) -> str:
    return f"{user}-{secrets.token_hex(3)}@example.org"


def mock_dns(target: dict, what: str, **body) -> None:
    """Tell pebble-challtestsrv's mock DNS (add-a / clear-a)."""
    requests.post(f"{target['acme']['challtestsrv']}/{what}", json=body, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def domain(target):
    """A fresh subdomain of the testbed's ACME domain whose names lead to this server."""
    name = f"r{secrets.token_hex(3)}.{target['acme']['domain']}"
    hosts = [f"{label}.{name}" for label in ("acme-one", "acme-two", readiness.DNS_PROBE)]
    for host in hosts:
        mock_dns(target, "add-a", host=host, addresses=[target["http"]["host"]])
    yield name
    for host in hosts:
        mock_dns(target, "clear-a", host=host)


@pytest.fixture(scope="module")
def acme_stack(target, acme_remote, domain):
    """The stack prepared for HTTPS from Pebble; its previous settings are put back after."""
    before = stack.read_settings(acme_remote)
    # A fresh contact per run: Pebble forgets its accounts when it restarts, while Caddy's storage
    # keeps the account it registered for an address and would keep presenting it (accountDoesNotExist).
    settings = stack.StackSettings.for_images(target["images"], domain=domain, email=fresh_email("lab"),
                                              acme_ca=target["acme"]["directory"],
                                              acme_ca_root=target["acme"]["ca_root"])
    try:
        stack.prepare(acme_remote, settings)
        yield settings
    finally:
        for app in ("acme-one", "acme-two"):
            destroy_if_deployed(acme_remote, app)
        stack.prepare(acme_remote, before or stack.StackSettings.for_images(target["images"], domain="localhost"))


@pytest.fixture(scope="module")
def pebble_roots(target) -> str:
    """Pebble's root (it makes a new one at each start), from its management API."""
    res = requests.get(target["acme"]["roots_url"], verify=target["acme"]["ca_root"], timeout=10)
    res.raise_for_status()
    return res.text


@pytest.fixture(scope="module")
def app_one(target, acme_remote, acme_stack):
    destroy_if_deployed(acme_remote, "acme-one")
    return deploy.deploy(EXAMPLE, "acme-one", acme_remote, **deploy_kwargs(target))


def fetch_https(target: dict, host: str, roots: str) -> tuple[int, bytes, x509.Certificate]:
    """GET / from the server's address with `host` as SNI and Host, verified against `roots`
    (Caddy gets its certificate in the background: waits for it, at most CERT_WAIT)."""
    context = ssl.create_default_context(cadata=roots)
    deadline = time.monotonic() + CERT_WAIT
    while True:
        try:
            with socket.create_connection((target["http"]["host"], target["http"]["https_port"]), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    der = tls.getpeercert(binary_form=True)
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    response = http.client.HTTPResponse(tls)
                    response.begin()
                    return response.status, response.read(), x509.load_der_x509_certificate(der)
        except (ssl.SSLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"no verified HTTPS answer for {host} within {CERT_WAIT} s: {exc}") from exc
            time.sleep(1)


def names_of(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_the_app_serves_over_https_with_a_certificate_from_the_acme_ca(target, app_one, domain, pebble_roots):
    host = f"acme-one.{domain}"
    assert app_one.url == f"https://{host}/"
    status, body, cert = fetch_https(target, host, pebble_roots)
    assert status == 200 and body
    assert names_of(cert) == [host]
    assert "Pebble" in cert.issuer.rfc4514_string()  # issued through ACME by Pebble, not Caddy's own CA


def test_plain_http_redirects_to_https(target, app_one, domain):
    host = f"acme-one.{domain}"
    res = requests.get(f"http://{target['http']['host']}:{target['http']['port']}/", headers={"Host": host},
                       allow_redirects=False, timeout=10)
    assert res.status_code in (301, 308), res.text[:200]
    assert res.headers["Location"] == f"https://{host}/"


def test_a_second_app_gets_its_own_certificate(target, acme_remote, app_one, domain, pebble_roots):
    first = fetch_https(target, f"acme-one.{domain}", pebble_roots)[2]
    destroy_if_deployed(acme_remote, "acme-two")
    deploy.deploy(EXAMPLE, "acme-two", acme_remote, **deploy_kwargs(target))
    status, _, second = fetch_https(target, f"acme-two.{domain}", pebble_roots)
    assert status == 200
    assert names_of(second) == [f"acme-two.{domain}"] and second.serial_number != first.serial_number


def caddy_container(remote) -> str:
    return remote.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", layout.CADDY_CONTAINER]).stdout


def test_changed_acme_settings_reload_caddy_without_a_new_container(target, acme_remote, acme_stack, app_one,
                                                                    domain, pebble_roots, tmp_path):
    fetch_https(target, f"acme-one.{domain}", pebble_roots)
    before = caddy_container(acme_remote)
    # A CA root file with one more certificate in it, and another contact address.
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(Path(target["acme"]["ca_root"]).read_bytes() + Path(target["registry"]["ca_cert"]).read_bytes())
    changed = stack.StackSettings.from_dict({**acme_stack.__dict__, "acme_ca_root": str(bundle),
                                             "email": fresh_email("other")})
    result = stack.prepare(acme_remote, changed)
    assert layout.caddyfile() in result.written
    assert caddy_container(acme_remote) == before  # reloaded in place: no connection dropped
    seen = acme_remote.run(["docker", "exec", layout.CADDY_CONTAINER, "cat", "/etc/caddy/Caddyfile",
                            f"{stack.TRUST_IN_CONTAINER}/{stack.ACME_CA_ROOT_NAME}"]).stdout
    assert f"email {changed.email}" in seen and seen.count("BEGIN CERTIFICATE") == 2
    assert fetch_https(target, f"acme-one.{domain}", pebble_roots)[0] == 200
    stack.prepare(acme_remote, acme_stack)
    assert caddy_container(acme_remote) == before


def server_resolves_through_the_testbed(acme_remote, name: str, address: str) -> None:
    out = acme_remote.run(["getent", "ahosts", name], check=False).stdout
    if address not in out.split():
        pytest.fail(f"The {SERVER} server does not resolve {name} through the testbed's resolver (got "
                    f"{out.split()[:1] or 'nothing'}): its /etc/resolv.conf must say `nameserver "
                    "10.250.0.1` (testbed.json acme.resolver).", pytrace=False)


def test_readiness_says_a_domain_points_here(target, acme_remote, acme_stack, domain):
    server_resolves_through_the_testbed(acme_remote, f"{readiness.DNS_PROBE}.{domain}", target["http"]["host"])
    table = readiness.check(acme_remote)  # the domain the stack was prepared with
    row = table[table["id"] == "dns"].iloc[0]
    assert row["ok"] and target["http"]["host"] in row["detail"], row.to_dict()


def test_readiness_reports_a_domain_whose_dns_points_elsewhere_before_any_deploy(target, acme_remote, acme_stack):
    wrong = f"w{secrets.token_hex(3)}.{target['acme']['domain']}"
    probe = f"{readiness.DNS_PROBE}.{wrong}"
    mock_dns(target, "add-a", host=probe, addresses=[ELSEWHERE])
    try:
        server_resolves_through_the_testbed(acme_remote, probe, ELSEWHERE)
        table = readiness.check(acme_remote, domain=wrong)
    finally:
        mock_dns(target, "clear-a", host=probe)
    row = table[table["id"] == "dns"].iloc[0]
    assert not row["ok"]
    assert f"points at {ELSEWHERE}, not at this server ({target['http']['host']})" in row["detail"]
    assert f"Point an A record for *.{wrong}" in row["hint"] and target["http"]["host"] in row["hint"]
    assert not readiness.is_ready(table)
