"""Certificates from any ACME CA (issue 19): the settings, the Caddy files they make, the CA
root's checks, the scripts that reload Caddy and resolve names on the server, and the DNS
readiness decision. Pure, or a real `sh` with a stand-in `docker`."""

from __future__ import annotations

import datetime
import subprocess

import pandas as pd
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labdeploy import names
from labdeploy.commands import caddy as caddy_commands, hostfacts
from labdeploy.errors import ValidationError
from labdeploy.server import caddy, readiness, stack

STEP_CA = "https://ca.lab.example.org/acme/acme/directory"


def pem_ca(tmp_path, *, with_key: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    data = cert.public_bytes(serialization.Encoding.PEM)
    if with_key:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path = tmp_path / ("ca-and-key.pem" if with_key else "root_ca.crt")
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ settings

@pytest.mark.parametrize("url", ["https://10.250.0.1:14000/dir", STEP_CA, stack.LETSENCRYPT_STAGING,
                                 "https://acme.example.org", "https://acme.example.org/directory/"])
def test_acme_directory_urls_that_are_taken(url):
    assert names.acme_directory(url) == url
    assert stack.StackSettings(acme_ca=url).validate().acme_ca == url


@pytest.mark.parametrize("url, words", [
    ("http://acme.example.org/dir", "plain HTTP"),
    ("https://acme.example.org/dir?x=1", "not https://"),
    ("https://user@acme.example.org/dir", "not https://"),
    ("https://acme.example.org/a b", "not https://"),
    ("https://acme.example.org/dir\n}", "not https://"),
    ("https://[::1]/dir", "not https://"),
    ("https://acme..example.org/dir", "not a valid name"),
    ("https://acme.example.org:99999/dir", "port 99999"),
    ("https://acme.example.org/d#x", "not https://"),
    ("acme.example.org/dir", "not https://"),
    ("https://" + "a" * 300 + ".org/", "at most"),
])
def test_acme_directory_urls_that_are_refused_say_why(url, words):
    with pytest.raises(ValidationError) as err:
        stack.StackSettings(acme_ca=url).validate()
    assert words in err.value.message and err.value.hint and err.value.code == "invalid.acme_ca"


def test_staging_is_a_word_for_lets_encrypts_staging_directory():
    assert stack.StackSettings(acme_ca="staging").acme_ca == stack.LETSENCRYPT_STAGING
    assert stack.LETSENCRYPT_STAGING.startswith("https://acme-staging-v02.api.letsencrypt.org/")
    stack.check_fields(acme_ca="staging")
    with pytest.raises(ValidationError):
        stack.StackSettings(acme_ca=" Staging").validate()  # one exact word, nothing near it


def test_settings_read_back_from_a_server_keep_the_acme_fields():
    s = stack.StackSettings(domain="exp.example.org", acme_ca=STEP_CA, acme_ca_root="/home/me/root_ca.crt")
    again = stack.StackSettings.from_dict(s.__dict__)
    assert again == s
    # The CA root file is on the researcher's computer: settings naming it validate anywhere.
    again.validate()


# ------------------------------------------------------------------ the CA root

def test_a_ca_root_is_read_and_checked_to_be_certificates(tmp_path):
    path = pem_ca(tmp_path)
    assert stack.read_ca_root(str(path)).startswith(b"-----BEGIN CERTIFICATE-----")
    stack.check_fields(acme_ca_root=str(path))


def test_a_ca_root_that_is_not_a_certificate_is_refused(tmp_path):
    missing, text, key = tmp_path / "nope.pem", tmp_path / "notes.txt", pem_ca(tmp_path, with_key=True)
    text.write_text("hello\n")
    for path, words in ((missing, "can't be read"), (text, "not a PEM certificate"), (key, "private key")):
        with pytest.raises(ValidationError) as err:
            stack.read_ca_root(str(path))
        assert words in err.value.message and err.value.code == "invalid.acme_ca_root"
    with pytest.raises(ValidationError):
        stack.check_fields(acme_ca_root=str(text))  # the CLI's early check reads the file too
    with pytest.raises(ValidationError):
        stack.StackSettings(acme_ca_root="a\nb").validate()


def test_prepare_refuses_a_bad_ca_root_before_connecting(tmp_path):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the server was touched ({name})")

    with pytest.raises(ValidationError):
        stack.prepare(Untouchable(), stack.StackSettings(domain="exp.example.org",
                                                         acme_ca_root=str(tmp_path / "none.pem")))


# ------------------------------------------------------------------ Caddy's files

def test_the_caddyfile_names_the_acme_directory_and_the_mounted_ca_root(tmp_path):
    text = stack.caddyfile(stack.StackSettings(domain="exp.example.org", email="lab@example.org", acme_ca=STEP_CA,
                                               acme_ca_root=str(pem_ca(tmp_path))))
    options = text.split("}", 1)[0]
    assert f"\tacme_ca {STEP_CA}\n" in options
    assert f"\tacme_ca_root {stack.TRUST_IN_CONTAINER}/{stack.ACME_CA_ROOT_NAME}\n" in options
    assert "email lab@example.org" in options and "auto_https off" not in options


def test_without_acme_settings_the_caddyfile_is_as_before():
    text = stack.caddyfile(stack.StackSettings(domain="exp.example.org"))
    assert "acme_ca" not in text


def test_local_domains_stay_plain_http_whatever_the_acme_settings():
    settings = stack.StackSettings(domain="localhost", acme_ca=STEP_CA)
    assert "auto_https off" in stack.caddyfile(settings)
    assert caddy.app_url("exp", settings) == "http://exp.localhost/"
    assert caddy.site_block("exp", settings).splitlines()[1].startswith("http://exp.localhost")
    public = stack.StackSettings(domain="exp.example.org", acme_ca=STEP_CA)
    assert caddy.app_url("exp", public) == "https://exp.exp.example.org/"
    assert caddy.site_block("exp", public).splitlines()[1].startswith("exp.exp.example.org, ")


def test_caddy_sees_the_trust_folder_read_only():
    volumes = stack.stack_compose_document(stack.StackSettings())["services"]["caddy"]["volumes"]
    assert f"./caddy.trust:{stack.TRUST_IN_CONTAINER}:ro" in volumes
    assert yaml.safe_load(stack.stack_compose_yaml(stack.StackSettings()))  # still one document


# ------------------------------------------------------------------ scripts under a real sh

def sh(argv, cwd, env=None):
    return subprocess.run(argv, cwd=cwd, capture_output=True, env=env)


def test_the_caddyfile_is_replaced_in_place_keeping_its_inode(tmp_path):
    target = tmp_path / "Caddyfile"
    target.write_text("old\n")
    inode = target.stat().st_ino
    (tmp_path / "Caddyfile.new").write_text("new\n")
    assert sh(caddy_commands.replace_in_place("Caddyfile"), tmp_path).returncode == 0
    assert target.read_text() == "new\n" and target.stat().st_ino == inode
    assert not (tmp_path / "Caddyfile.new").exists()


@pytest.fixture
def docker_with_caddyfile(tmp_path):
    """A stand-in `docker` whose container reads tmp_path/seen as its Caddyfile and logs the rest."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(
        '#!/bin/sh\nif [ "$3" = sha256sum ]; then sha256sum "$SEEN"; exit; fi\necho "$@" >> "$LOG"\n')
    (bindir / "docker").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LOG": str(tmp_path / "log"), "SEEN": str(tmp_path / "seen")}
    (tmp_path / "Caddyfile").write_text("{\n}\n")
    return env


def test_caddy_reloads_only_when_its_container_sees_the_new_caddyfile(tmp_path, docker_with_caddyfile):
    env = docker_with_caddyfile
    (tmp_path / "seen").write_text("an older copy\n")
    res = sh(caddy_commands.reload_mounted("dallinger-caddy", "Caddyfile"), tmp_path, env)
    assert res.returncode == caddy_commands.STALE_MOUNT and not (tmp_path / "log").exists()
    (tmp_path / "seen").write_text("{\n}\n")
    assert sh(caddy_commands.reload_mounted("dallinger-caddy", "Caddyfile"), tmp_path, env).returncode == 0
    assert sh(caddy_commands.reload_mounted("dallinger-caddy", "Caddyfile", force=True), tmp_path, env).returncode == 0
    assert (tmp_path / "log").read_text().splitlines() == [
        "exec dallinger-caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
        "exec dallinger-caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile --force"]


def test_names_are_resolved_on_the_server_one_section_each(tmp_path):
    out = sh(hostfacts.resolve("localhost", "nothing.invalid"), tmp_path).stdout.decode()
    got = hostfacts.read_resolved(out)
    assert set(got) == {"localhost", "nothing.invalid"}
    assert "127.0.0.1" in got["localhost"] or "::1" in got["localhost"]
    assert got["nothing.invalid"] == []
    with pytest.raises(ValidationError):
        hostfacts.resolve("a name; reboot")


# ------------------------------------------------------------------ DNS readiness (pure)

SERVER = {"addresses": ["10.0.0.5 172.17.0.1 fe80::1%2 "], "reached": ["10.0.0.5"]}


def test_dns_pointing_at_the_server_passes():
    row = readiness.judge_dns("exp.example.org", "labdeploy-dns-check.exp.example.org", ["10.0.0.5"], SERVER)
    assert row["ok"] and row["id"] == "dns" and "this server" in row["detail"] and not row["hint"]


def test_dns_pointing_at_the_public_address_behind_a_nat_passes():
    # The server knows only its private address; this computer reaches it at the public one.
    row = readiness.judge_dns("exp.example.org", "a.exp.example.org", ["203.0.113.7"], SERVER,
                              reached_at=["203.0.113.7"])
    assert row["ok"], row


def test_dns_pointing_elsewhere_says_where_and_what_to_do():
    row = readiness.judge_dns("exp.example.org", "labdeploy-dns-check.exp.example.org", ["198.51.100.7"], SERVER,
                              reached_at=["203.0.113.7"], local=["198.51.100.8"])
    assert not row["ok"]
    assert "points at 198.51.100.7, not at this server (203.0.113.7)" in row["detail"]
    assert "your computer resolves it to 198.51.100.8" in row["detail"]
    assert "Point an A record for *.exp.example.org" in row["hint"] and "at 203.0.113.7" in row["hint"]


def test_dns_that_does_not_resolve_on_the_server_hints_the_record():
    row = readiness.judge_dns("exp.example.org", "a.exp.example.org", [], SERVER)
    assert not row["ok"] and "does not resolve on the server" in row["detail"]
    assert "A record for *.exp.example.org" in row["hint"] and "at 10.0.0.5" in row["hint"]
    v6 = readiness.judge_dns("exp.example.org", "a.exp.example.org", [], {"addresses": ["2001:db8::5"]})
    assert "AAAA record" in v6["hint"] and "2001:db8::5" in v6["hint"]


def test_the_same_answer_here_and_there_is_not_repeated():
    row = readiness.judge_dns("exp.example.org", "a.exp.example.org", ["198.51.100.7"], SERVER,
                              local=["198.51.100.7"])
    assert "your computer" not in row["detail"]


def test_the_probe_name_and_the_stack_domain():
    assert readiness.dns_name("exp.example.org") == "labdeploy-dns-check.exp.example.org"
    assert readiness.dns_name("exp.example.org", "stroop") == "stroop.exp.example.org"
    facts = {"stack_json": ['{"settings": {', '"domain": "exp.example.org"', "}}"]}
    assert readiness.stack_domain(facts) == "exp.example.org"
    assert readiness.stack_domain({}) == "" and readiness.stack_domain({"stack_json": ["{broken"]}) == ""


def test_dns_that_does_not_point_here_warns_a_deploy_but_does_not_refuse_it():
    row = readiness.judge_dns("exp.example.org", "a.exp.example.org", ["198.51.100.7"], SERVER)
    table = pd.DataFrame([row], columns=readiness.COLUMNS)
    warnings = readiness.judge_deploy(table)
    assert len(warnings) == 1 and "198.51.100.7" in warnings[0].message and "A record" in warnings[0].hint
    assert not readiness.is_ready(table)  # and the readiness check says it is not ready
