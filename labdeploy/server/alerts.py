"""Alerts that reach the researcher with no laptop open: a watcher in the shared stack (the
`alerts` service, Python's standard library in the watcher image) checks every minute that each
app's processes run, the disk and memory, PostgreSQL's connections, the backups; it sends to a
Slack-compatible webhook and/or by e-mail, once per incident and again on recovery, with a quiet
period per incident so a flapping container does not flood.

    alerts.set(server, webhook_url=..., email_to=[...], smtp_host=..., ...)   configure
    alerts.test(server)       a test message through every channel, from the server
    alerts.list(server)       the settings (secrets only as set / not set)
    alerts.history(server)    past incidents as a DataFrame

The webhook URL and the SMTP password are kept like the other secrets: 0600 files in
~/dallinger/secrets on the server, sent over SFTP, never in a compose file, argv or log.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Optional

import pandas as pd

from . import layout
from .. import names
from ..commands import alerts as commands, files
from ..errors import LabdeployError, Remedy, ValidationError
from ..redaction import redact
from ..ssh import pool

SCRIPT_NAME = "watcher.py"
CONTAINER = "dallinger-alerts"
DEFAULT_IMAGE = "python:3.12-slim"
WEBHOOK_SECRET = "alerts_webhook"
SMTP_SECRET = "alerts_smtp_password"
HISTORY_COLUMNS = ["time", "event", "key", "text", "duration_s", "sent"]


class AlertsError(LabdeployError):
    code = "alerts.failed"


def script_dir() -> str:
    return f"{layout.ROOT}/alerts"


def config_path() -> str:
    return f"{script_dir()}/config.json"


def state_dir() -> str:
    return f"{layout.DATA_ROOT}/alerts"  # "alerts" is a name no app may take (names.RESERVED)


def secret_path(name: str) -> str:
    return f"{layout.secrets_dir()}/{name}"


def script() -> str:
    return resources.files("labdeploy.server").joinpath("alertwatch.pysrc").read_text()


def script_digest() -> str:
    return hashlib.sha256(script().encode()).hexdigest()[:16]


def service_document(image: str, user: str, docker_access: tuple) -> dict:
    """The `alerts` service of the stack's compose file: runs as the login user with Docker's
    socket (which that user may use anyway), reads ~/dallinger, writes only its own state."""
    socket_path, group = docker_access
    return {
        "image": names.image(image, "alert watcher image"),
        "container_name": CONTAINER,
        "restart": "unless-stopped",
        "user": user,
        "group_add": [str(int(group))],
        "entrypoint": ["python3", f"/labdeploy/{SCRIPT_NAME}"],
        "command": ["serve"],
        "environment": {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        "volumes": ["./alerts:/labdeploy:ro", ".:/dallinger:ro", f"../{state_dir()}:/state",
                    f"../{layout.BACKUPS_ROOT}:/backups:ro", f"{socket_path}:/var/run/docker.sock"],
        "networks": [layout.NETWORK],
        "labels": {"labdeploy.server.stack": "alerts", "labdeploy.alerts.script": script_digest()},
    }


# --------------------------------------------------------------------------- settings (pure)

@dataclass
class AlertSettings:
    """Thresholds and channels. Secrets are not fields: they go to their own 0600 files."""

    interval_s: int = 60
    quiet_minutes: int = 30
    disk_free_min_pct: float = 10.0
    memory_max_pct: float = 90.0
    connections_max_pct: float = 80.0
    web_error_max_pct: float = 10.0  # of an app's requests answered 5xx in one round
    web_min_requests: int = 20  # fewer requests in a round: no rate is judged
    sample_every_s: int = 600  # disk and memory recorded for trends (doctor)
    webhook: bool = False  # a webhook URL is set
    email: dict = field(default_factory=dict)  # host, port, security (starttls|ssl|none), user, from, to

    def validate(self) -> "AlertSettings":
        _number(self.interval_s, "interval_s", 2, 3600)
        _number(self.quiet_minutes, "quiet_minutes", 0, 10080)
        _number(self.disk_free_min_pct, "disk_free_min_pct", 0, 100)
        _number(self.memory_max_pct, "memory_max_pct", 1, 100)
        _number(self.connections_max_pct, "connections_max_pct", 1, 100)
        _number(self.web_error_max_pct, "web_error_max_pct", 0, 100)
        _number(self.web_min_requests, "web_min_requests", 1, 1_000_000)
        _number(self.sample_every_s, "sample_every_s", 2, 86400)
        if self.email:
            _check_email(self.email)
        return self


def _number(value, what: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValidationError(f"{what}={value!r} is not a number from {low:g} to {high:g}.",
                              f"Give {what} between {low:g} and {high:g}.", code="invalid.alerts")


def _check_email(email: dict) -> None:
    names.host(email.get("host"))
    names.port(email.get("port", 587))
    for address in [email.get("from"), *email.get("to", [])]:
        names.email(address)
    if not email.get("to"):
        raise ValidationError("No address to send alerts to.", "Give at least one address in email_to.",
                              code="invalid.alerts")
    if email.get("security", "starttls") not in ("starttls", "ssl", "none"):
        raise ValidationError(f"SMTP security {email.get('security')!r} is not starttls, ssl or none.",
                              "Most providers use starttls on port 587, or ssl on 465.", code="invalid.alerts")
    if email.get("user") is not None and not isinstance(email.get("user"), str):
        raise ValidationError("The SMTP user is not text.", code="invalid.alerts")


def _check_webhook(url) -> str:
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or any(c.isspace() for c in url) \
            or len(url) > 2000:
        raise ValidationError("The webhook URL is not an http(s) URL.",
                              "Give the URL your chat service gave you (e.g. https://hooks.slack.com/services/...).",
                              code="invalid.alerts.webhook")
    return url


# --------------------------------------------------------------------------- on the server

def read_settings(remote) -> AlertSettings:
    res = remote.run(files.read(config_path()), check=False)
    try:
        data = json.loads(res.stdout) if res.exit_status == 0 and res.stdout.strip() else {}
    except ValueError:
        data = {}
    known = {k: v for k, v in data.items() if k in AlertSettings.__dataclass_fields__}
    return AlertSettings(**known)


def _write_secret(remote, name: str, value: Optional[str]) -> None:
    path = secret_path(name)
    remote.makedirs(layout.secrets_dir(), 0o700)
    if value:
        remote.put_bytes(path, value.encode() + b"\n", mode=0o600)  # over SFTP: never a command line
    elif remote.exists(path):
        remote.remove(path)


_UNSET = object()


@pool.closes_what_it_opens
def configure(server, *, webhook_url=_UNSET, email_to=_UNSET, email_from: Optional[str] = None,
              smtp_host: Optional[str] = None, smtp_port: int = 587, smtp_security: str = "starttls",
              smtp_user: Optional[str] = None, smtp_password=_UNSET, **thresholds) -> pd.DataFrame:
    """Set the channels and thresholds (those not given stay as they are; "" or [] removes a
    channel). Checked before anything reaches the server. The watcher reads them on its next round."""
    allowed = builtins.set(AlertSettings.__dataclass_fields__) - {"webhook", "email"}
    bad = sorted(builtins.set(thresholds) - allowed)
    if bad:
        raise ValidationError(f"{', '.join(bad)} is not an alert setting.",
                              f"Use {', '.join(sorted(allowed))}.", code="invalid.alerts")
    if webhook_url is not _UNSET and webhook_url:
        _check_webhook(webhook_url)
    email = None
    if email_to is not _UNSET:
        to = [email_to] if isinstance(email_to, str) else builtins.list(email_to or [])
        email = {"host": smtp_host, "port": int(smtp_port), "security": smtp_security, "user": smtp_user or "",
                 "from": email_from or (to[0] if to else ""), "to": to} if to else {}
        if email:
            _check_email(email)
    remote = pool.remote(server)
    current = read_settings(remote)
    settings = AlertSettings(**{**asdict(current), **thresholds})
    if webhook_url is not _UNSET:
        settings.webhook = bool(webhook_url)
    if email is not None:
        settings.email = email
    settings.validate()
    if webhook_url is not _UNSET:
        _write_secret(remote, WEBHOOK_SECRET, webhook_url or None)
    if smtp_password is not _UNSET:
        _write_secret(remote, SMTP_SECRET, smtp_password or None)
    remote.makedirs(script_dir(), 0o755)
    text = json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n"
    remote.put_bytes(config_path(), text.encode(), mode=0o644)
    return _frame(remote, settings)


def _frame(remote, settings: AlertSettings) -> pd.DataFrame:
    rows = [{"setting": k, "value": v} for k, v in asdict(settings).items() if k not in ("webhook", "email")]
    email = settings.email or {}
    rows += [{"setting": "webhook", "value": "set" if remote.exists(secret_path(WEBHOOK_SECRET)) else "not set"},
             {"setting": "email_to", "value": ", ".join(email.get("to", [])) or "not set"},
             {"setting": "smtp_host", "value": f"{email.get('host')}:{email.get('port')}" if email else ""},
             {"setting": "smtp_password", "value": "set" if remote.exists(secret_path(SMTP_SECRET)) else "not set"}]
    return pd.DataFrame(rows, columns=["setting", "value"])


@pool.closes_what_it_opens
def settings_frame(server) -> pd.DataFrame:
    """The alert settings as a DataFrame (secrets only as set / not set)."""
    remote = pool.remote(server)
    return _frame(remote, read_settings(remote))


@pool.closes_what_it_opens
def send_test(server) -> pd.DataFrame:
    """A test message through every channel set, sent by the watcher on the server: one row per
    channel with ok and the error, if any."""
    remote = pool.remote(server)
    res = remote.run(commands.in_watcher(CONTAINER, "test"), check=False, timeout=120)
    try:
        results = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else None
    except ValueError:
        results = None
    if not isinstance(results, dict):
        raise AlertsError(f"The alert watcher on {remote.host} did not answer: {redact(res.stderr.strip())[-500:]}",
                          code="alerts.not_running", remedy=Remedy("stack.prepare"))
    if not results:
        raise AlertsError("No alert channel is set: nothing was sent.",
                          "Set a webhook URL or an e-mail address for alerts first.", code="alerts.no_channel")
    return pd.DataFrame([{"channel": k, "ok": not v, "error": redact(v)} for k, v in results.items()],
                        columns=["channel", "ok", "error"])


def check_now(remote) -> pd.DataFrame:
    """The problems the watcher sees right now (one round of its checks, nothing sent)."""
    res = remote.run(commands.in_watcher(CONTAINER, "once"), check=False, timeout=120)
    rows = [dict(zip(("key", "text"), line.split("\t", 1))) for line in res.stdout.splitlines() if "\t" in line]
    df = pd.DataFrame(rows, columns=["key", "text"])
    df.attrs["running"] = res.exit_status == 0
    return df


def _read_lines(remote, name: str) -> list:
    """The JSON lines of one of the watcher's files (none when it has not written it yet)."""
    res = remote.run(files.read(f"{state_dir()}/{name}"), check=False)
    rows = []
    for line in (res.stdout if res.exit_status == 0 else "").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


@pool.closes_what_it_opens
def history(server) -> pd.DataFrame:
    """Every incident the watcher opened, notified (or kept quiet), and saw recover, oldest first."""
    rows = _read_lines(pool.remote(server), "history.jsonl")
    df = pd.DataFrame(rows if rows else [], columns=HISTORY_COLUMNS)
    df = df.reindex(columns=HISTORY_COLUMNS)
    df["time"] = pd.to_datetime(pd.to_numeric(df["time"], errors="coerce"), unit="s", utc=True)
    df["text"] = df["text"].map(lambda t: redact(str(t)) if isinstance(t, str) else t)
    return df.reset_index(drop=True)


USAGE_COLUMNS = ["time", "disk_free_gb", "disk_total_gb", "mem_used_pct"]


@pool.closes_what_it_opens
def usage(server) -> pd.DataFrame:
    """The disk and memory the watcher recorded (every `sample_every_s`, two weeks kept), oldest first."""
    rows = []
    for entry in _read_lines(pool.remote(server), "usage.jsonl"):
        try:
            rows.append((float(entry["time"]), entry["disk_free"] / 1e9, entry["disk_total"] / 1e9,
                         float(entry["mem_used_pct"])))
        except (KeyError, TypeError, ValueError):
            continue
    df = pd.DataFrame(rows, columns=USAGE_COLUMNS)
    df["time"] = pd.to_datetime(df["time"], unit="s", utc=True)
    return df


# The API's words (`alerts.set`, `alerts.list`): defined last, so the builtins stay usable above.
set = configure  # noqa: A001
test = send_test
list = settings_frame  # noqa: A001
