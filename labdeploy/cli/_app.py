"""The root `labdeploy` group, shared options, and how errors become exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Optional

import click

from ..errors import LabdeployError, UnknownHostKey, ValidationError
from ..ssh import pool as ssh_pool  # light: paramiko and pandas load with the first server
from . import _ui
from . import remedies as cli_remedies
from ._ui import (EXIT_CODES_HELP, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, STATE, CliError, NeedsConfirmation, UsageProblem)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def core(name: str):
    """Import a core module (lazily: keeps `labdeploy --help` fast), with a clear error if it
    is missing from this installation."""
    import labdeploy

    try:
        return getattr(labdeploy, name)  # the package's public names (labdeploy.PUBLIC_MODULES)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("labdeploy."):
            raise CliError(f"This labdeploy installation has no `labdeploy.{name}` module, which this "
                           f"command needs.", "Update labdeploy (`pip install -U labdeploy`).") from exc
        raise


# ---------------------------------------------------------------- shared options

def _set_flag(attr):
    def callback(ctx, param, value):
        if value:
            setattr(STATE, attr, True)
        return value
    return callback


def common_options(f):
    """--json/--debug/--quiet/--verbose, accepted after the command name as well as before it."""
    f = click.option("--json", "json_", is_flag=True, expose_value=False, callback=_set_flag("json"),
                     help="Print the result as JSON on stdout (for scripts).")(f)
    f = click.option("--debug", is_flag=True, expose_value=False, callback=_set_flag("debug"),
                     help="Show the full traceback when something fails.")(f)
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                     help="Print only the result and errors.")(f)
    f = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_flag("verbose"),
                     help="Show every log line of long steps.")(f)
    return f


def _complete_server(ctx, param, incomplete):
    try:
        return [n for n in server_names() if n.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []


def server_option(f):
    return click.option(
        "--server", "-s", "server", metavar="NAME", envvar="LABDEPLOY_SERVER", show_envvar=True,
        shell_complete=_complete_server,
        help="The registered server to use. Default: $LABDEPLOY_SERVER, else the only registered one.")(f)


def app_option(required: bool = True):
    def deco(f):
        return click.option("--app", "-a", "app", metavar="NAME", required=required, callback=_check_app,
                            help="The app (experiment) name, e.g. stroop-pilot.")(f)
    return deco


def _check_app(ctx, param, value):
    if value is None:
        return value
    from .. import names

    with _ui.usage_errors(ValidationError):
        return names.app_name(value)


def _check_domain(ctx, param, value):
    """--domain: refused at option-parse time, before any connection."""
    if value is None:
        return value
    from .. import names

    with _ui.usage_errors(ValidationError):
        return names.domain(value)


def _check_service(ctx, param, value):
    from .. import names

    with _ui.usage_errors(ValidationError):
        if isinstance(value, (tuple, list)):
            return tuple(names.service(v) for v in value)
        return names.service(value) if value is not None else value


def service_option(default: Optional[str] = "web"):
    def deco(f):
        return click.option("--service", "service", metavar="SERVICE", default=default, show_default=bool(default),
                            callback=_check_service, help="The app's service: web, worker, clock or redis.")(f)
    return deco


def yes_option(f):
    return click.option("--yes", "-y", "yes", is_flag=True,
                        help="Answer yes to the confirmation (needed in scripts and other non-interactive runs).")(f)


# ---------------------------------------------------------------- servers


def server_names() -> list:
    servers = core("servers")
    out = []
    for s in servers.list_servers():
        out.append(getattr(s, "name", s))
    return out


def pick_server(name: Optional[str]) -> str:
    """--server, else $LABDEPLOY_SERVER (click reads it into `name`), else the only registered one."""
    known = server_names()
    if name:
        if name not in known:
            from .. import names as _names

            with _ui.usage_errors(ValidationError):
                _names.server_name(name)
            raise UsageProblem(f"No server named {name!r} is registered."
                               + (f" Registered: {', '.join(known)}." if known else ""),
                               "Check the name (`labdeploy servers list`), or register the server with "
                               "`labdeploy servers add NAME --host HOST --user USER`.")
        return name
    if len(known) == 1:
        return known[0]
    if not known:
        raise UsageProblem("No server is registered yet.",
                           "Register one: `labdeploy servers add NAME --host HOST --user USER`.")
    raise UsageProblem(f"Several servers are registered ({', '.join(known)}); which one?",
                       "Pass --server NAME, or set LABDEPLOY_SERVER.")


def connect(remote, *, trust=None, name: str = "", has_trust_option: bool = False):
    """Connect, handling first contact: never accept a host key silently.

    An unknown key is trusted only if it matches `trust` (--trust-host-key: one fingerprint,
    or several for a server behind jump hosts, one per key), or the user confirms its
    fingerprint at the prompt. A changed key is refused (the core's error). Behind a jump
    host, the jump host's key is asked about first, then the server's.
    """
    given = [t.strip() for t in ([trust] if isinstance(trust, str) else (trust or ())) if t and t.strip()]
    unused = list(given)
    for _ in range(8):  # one round per unknown key on the way (jump hosts, then the server)
        try:
            remote.connect()
            return remote
        except UnknownHostKey as exc:
            fp = exc.fingerprint
            role = getattr(exc, "role", "server")
            who = f"The {role} {exc.host}"
            if unused and fp not in unused and getattr(remote, "via", None) is not None:
                # A fingerprint given for a jump host trusted already (an earlier run) is used up.
                known = {s.fingerprint for s in remote.via.host_key_statuses() if s.state == "known"}
                unused = [u for u in unused if u not in known]
            if fp in unused:
                unused.remove(fp)
            elif unused:
                raise CliError(
                    f"{who} presents the host key {fp}, not the {' or '.join(unused)} you gave.",
                    f"Do not trust it: check the fingerprint with the {role}'s administrator "
                    "(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it).",
                    code="ssh.host_key.mismatch") from None
            elif _ui.interactive():
                click.echo(f"{who} (port {exc.port}) is not known yet."
                           + (" labdeploy reaches the server through it." if role != "server" else ""), err=True)
                click.echo(f"Its {exc.key_type} host key fingerprint is:\n\n    {fp}\n", err=True)
                click.echo(f"Compare it with the one the {role}'s administrator gives you (on the {role}: "
                           "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`).", err=True)
                if not click.confirm(f"Trust this {role}?", default=False, err=True):
                    raise CliError("The host key was not trusted; nothing was changed.",
                                   "Check the fingerprint, then run the command again.",
                                   code="ssh.host_key.not_trusted") from None
            else:
                which = f" --server {name}" if name else ""
                how = (f"run the same command again with --trust-host-key {fp}" if has_trust_option else
                       f"confirm it with `labdeploy servers check{which} --trust-host-key {fp}`")
                raise NeedsConfirmation(
                    f"{who} (port {exc.port}) is not known yet; its {exc.key_type} host key "
                    f"fingerprint is {fp}. labdeploy never trusts a new host key without confirmation.",
                    f"Check the fingerprint with the {role}'s administrator, then {how}; or run the command in a "
                    "terminal and answer the prompt.") from None
            remote.trust_host_key(fp)
            _ui.info(f"Trusted the host key {fp} of the {role} {exc.host} (saved in {remote.known_hosts}).")
    remote.connect()
    return remote


def run_pool():
    """This command's connections: one per server for the whole run; main() makes the pool and
    closes it when the command ends. (A command invoked without main() uses the process's.)"""
    return ssh_pool.current() or ssh_pool.kernel()


def open_server(name: Optional[str], *, trust: Optional[str] = None):
    """The chosen server as a connected Remote (one SSH connection for the whole command)."""
    chosen = pick_server(name)
    return connect(run_pool().get(chosen), trust=trust, name=chosen)


# ---------------------------------------------------------------- remedies in CLI words

# The app and service of the command that is running: a remedy's words use them where the
# error did not say (labdeploy.cli.remedies). Set by @with_hints, cleared by main().
_command_context: dict = {}


def with_hints(f):
    """Decorator for app commands: a failure's remedy is worded with the command's --app and
    --service (where the error itself does not name them). The error is left as raised."""
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        services = kwargs.get("services") or ()
        _command_context.update(app=kwargs.get("app"),
                                service=kwargs.get("service") or (services[0] if services else None))
        return f(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- the root group

ROOT_HELP = f"""Deploy and run online experiments on your own server over SSH.

The same workflow as the notebooks' panels: register a server, prepare it, log it in to a
Docker registry, deploy an experiment, watch it, export its data, tear it down.

\b
Examples:
  labdeploy servers add lab --host lab.example.org --user alice
  labdeploy servers prepare
  labdeploy deploy --app stroop-pilot ./my-experiment
  labdeploy status --app stroop-pilot
  labdeploy export --app stroop-pilot --out data.zip
  labdeploy destroy --app stroop-pilot

The server is --server NAME, else $LABDEPLOY_SERVER, else the only registered one.
Every command takes --json (machine-readable result on stdout; a failure becomes
{{"error": {{"message", "hint", "code", "exit_code"}}}}), --debug (show the traceback of a failure),
-q/--quiet and -v/--verbose. Progress and messages go to stderr.

Tab completion (bash): eval "$(_LABDEPLOY_COMPLETE=bash_source labdeploy)"

{EXIT_CODES_HELP}
"""


@click.group(context_settings=CONTEXT_SETTINGS, help=ROOT_HELP)
@click.version_option(package_name="labdeploy", prog_name="labdeploy")
@common_options
def cli() -> None:
    pass


# ---------------------------------------------------------------- running


def _debug_requested(argv: list) -> bool:
    head = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in head or bool(os.environ.get("LABDEPLOY_DEBUG"))


def _quiet_library_logging(debug: bool) -> None:
    """Libraries (paramiko) log through Python's last-resort handler to stderr, e.g. "Secsh
    channel open FAILED" while a deploy waits for the app's port. The CLI shows what matters
    through progress events and errors; library logs only with --debug."""
    import logging

    root = logging.getLogger()
    if debug:
        if not root.handlers:
            logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    elif not root.handlers:
        root.addHandler(logging.NullHandler())


def main(argv: Optional[list] = None) -> int:
    """Entry point of the `labdeploy` command. Returns (and exits with) a meaningful code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    if debug:
        STATE.debug = True
    _quiet_library_logging(debug)
    code = 0
    _command_context.clear()
    run = contextlib.ExitStack()  # this run's SSH connections: one per server, closed when it ends
    run.enter_context(ssh_pool.using(run.enter_context(ssh_pool.Pool())))
    try:
        try:
            rv = cli.main(args=argv, prog_name="labdeploy", standalone_mode=False)
            if isinstance(rv, int) and not isinstance(rv, bool):
                code = rv
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        if STATE.debug:
            traceback.print_exc()
        _ui.error("Interrupted.")
        code = EXIT_INTERRUPTED
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        if STATE.debug:
            traceback.print_exc()
        exc.show()
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except LabdeployError as exc:
        if STATE.debug:
            traceback.print_exc()
        hint = cli_remedies.hint(exc, **_command_context)  # the remedy in this front end's words
        code = cli_remedies.exit_code(exc.code)
        _ui.error(exc.message, hint)
        if STATE.json and not STATE.emitted:  # scripts get the error as data too (one JSON document)
            _ui.emit_json({"error": {"message": exc.message, "hint": hint, "code": exc.code,
                                     "type": type(exc).__name__, "exit_code": code}})
    except BrokenPipeError:
        # e.g. `labdeploy logs ... | head`: not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        code = 0
    except Exception as exc:  # noqa: BLE001 - a bug: say so, traceback with --debug only
        if STATE.debug:
            traceback.print_exc()
        _ui.error(f"Unexpected error: {type(exc).__name__}: {exc}",
                  "This is probably a bug in labdeploy. Run again with --debug to see the traceback, "
                  "and report it.")
        code = EXIT_FAILED
    finally:
        run.close()
    return code
