"""Terminal output for the CLI: tables, JSON, messages, prompts and progress.

Nothing here knows about servers or apps: it only renders what the core returns and asks
the user what the core needs. Status messages, progress and errors go to stderr so that
stdout carries only the result (a table, or JSON with --json).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, is_dataclass
from typing import Any, Optional

import click

from ..errors import LabdeployError
from ..progress import human_bytes
# Exit codes follow error codes (labdeploy.cli.remedies.EXIT_CODES).
from .remedies import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NEEDS_CONFIRMATION, EXIT_NOT_READY,  # noqa: F401
                       EXIT_OK, EXIT_USAGE, exit_code, exit_codes_help)

# ---------------------------------------------------------------- errors and exit codes

EXIT_CODES_HELP = exit_codes_help()


class CliError(LabdeployError):
    """An error raised by the CLI itself (not the core): its hint is in the CLI's words
    already. Its exit code follows its `code`."""

    code = "cli.failed"


class NeedsConfirmation(CliError):
    code = "cli.needs_confirmation"


class NotReady(CliError):
    code = "cli.not_ready"


class UsageProblem(CliError):
    code = "cli.usage"


@contextlib.contextmanager
def usage_errors(kind: type = LabdeployError):
    """A value the core refuses is the user's input error here: same words and remedy (the
    core error's code when it is a usage error already), exit code 2."""
    try:
        yield
    except CliError:
        raise
    except kind as exc:
        raise UsageProblem(exc.message, exc.plain_hint, remedy=exc.remedy,
                           code=exc.code if exit_code(exc.code) == EXIT_USAGE else None) from None


# ---------------------------------------------------------------- state


class State:
    """Options shared by every command (set from the root group or the command itself)."""

    def __init__(self) -> None:
        self.json = False
        self.debug = False
        self.quiet = False
        self.verbose = False
        self.emitted = False  # a JSON result is on stdout already


STATE = State()


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=False)


def _stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def interactive() -> bool:
    """True when a person can answer prompts (stdin and stderr are terminals)."""
    if os.environ.get("LABDEPLOY_NONINTERACTIVE"):
        return False
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------- messages

def info(text: str) -> None:
    if not STATE.quiet:
        click.echo(text, err=True)


def ok(text: str) -> None:
    if not STATE.quiet:
        click.secho(f"✓ {text}", err=True, fg="green")


def warn(text: str, hint: str = "") -> None:
    click.secho(f"! {text}", err=True, fg="yellow")
    if hint:
        click.secho(f"  What to do: {hint}", err=True, fg="yellow")


def error(message: str, hint: str = "") -> None:
    click.secho(f"Error: {message}", err=True, fg="red")
    if hint:
        click.secho(f"What to do: {hint}", err=True)


# ---------------------------------------------------------------- data out

def _jsonable(value: Any) -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return json.loads(value.to_json(orient="records", date_format="iso", default_handler=str))
        if isinstance(value, pd.Series):
            return json.loads(value.to_json(date_format="iso", default_handler=str))
        if value is pd.NaT:
            return None
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        try:
            return value.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, ensure_ascii=False))
    STATE.emitted = True


def _cell(value: Any) -> str:
    if value is None:
        return ""
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, pd.Timestamp):
            return value.strftime("%Y-%m-%d %H:%M:%S")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def table(df, *, title: str = "", columns: Optional[list] = None, empty: str = "(nothing)") -> None:
    """Print a DataFrame (or a list of dicts) as a table on stdout."""
    import pandas as pd
    from rich.table import Table

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(list(df))
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    if df.empty:
        if title:
            info(title)
        info(empty)
        return
    t = Table(title=title or None, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for col in df.columns:
        t.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        t.add_row(*[_cell(v) for v in row])
    console = _stdout_console()
    if not console.is_terminal:
        console.width = 200
    console.print(t)


def output(value: Any, *, render=None) -> None:
    """Print a result: JSON with --json, else via `render(value)` (or as a table / key list)."""
    if STATE.json:
        emit_json(value)
        return
    if render is not None:
        render(value)
        return
    try:
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            table(value)
            return
    except ImportError:  # pragma: no cover
        pass
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        width = max((len(str(k)) for k in value), default=0)
        for k, v in value.items():
            click.echo(f"{str(k).ljust(width)}  {_cell(_jsonable(v)) if not isinstance(v, str) else v}")
    elif value is not None:
        click.echo(str(value))


# ---------------------------------------------------------------- prompts

def confirm(question: str, *, yes: bool, flag: str = "--yes") -> None:
    """Go on only if the user agrees: `--yes` agrees in scripts; a non-interactive run without
    it refuses (exit 4) instead of guessing."""
    if yes:
        return
    if not interactive():
        raise NeedsConfirmation(f"{question} Refusing without confirmation in a non-interactive run.",
                                f"Run it again with {flag} to confirm.")
    if not click.confirm(question, default=False, err=True):
        raise NeedsConfirmation("Cancelled; nothing was changed.", code="cli.needs_confirmation.declined")


def read_secret(what: str, *, from_stdin: bool, flag: str = "--password-stdin") -> str:
    """A secret from stdin (one line, for scripts) or a hidden prompt; never from argv."""
    if from_stdin:
        data = sys.stdin.readline()
        secret = data.rstrip("\r\n")
        if not secret:
            raise UsageProblem(f"{flag} was given but stdin was empty.",
                               f"Pipe the {what} in, e.g. `printf '%s' \"$SECRET\" | labdeploy ... {flag}`.")
        return secret
    if not interactive():
        raise NeedsConfirmation(f"The {what} is needed, and this run cannot prompt for it.",
                                f"Pass it on stdin with {flag}.")
    return click.prompt(what[:1].upper() + what[1:], hide_input=True, err=True)


def read_credentials(address: str, username: str, *, from_stdin: bool, flag: str = "--password-stdin"):
    """registry.Credentials with the password from stdin or a hidden prompt (never from argv)."""
    from ..images.registry import Credentials

    password = read_secret(f"password (or access token) for {username} at {address}", from_stdin=from_stdin,
                           flag=flag)
    try:
        with usage_errors():
            return Credentials(address, username, password)
    finally:
        del password


# ---------------------------------------------------------------- progress


class PlainReporter:
    """Progress as plain lines on stderr (logs, CI, pipes): one line per step, a few per bar."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last_pct: dict[tuple, int] = {}

    def __call__(self, event) -> None:
        from ..progress import LogLine, Progress, StepFinished, StepStarted, WarningEvent

        try:
            with self._lock:
                if isinstance(event, StepStarted):
                    self._started[event.step] = time.monotonic()
                    click.echo(f"→ {event.step}" + (f": {event.detail}" if event.detail else ""), err=True)
                elif isinstance(event, StepFinished):
                    took = time.monotonic() - self._started.pop(event.step, time.monotonic())
                    mark = "✓" if event.ok else "✖"
                    detail = f" — {event.detail.splitlines()[0]}" if event.detail and not event.ok else ""
                    click.echo(f"{mark} {event.step} ({took:.1f}s){detail}", err=True)
                elif isinstance(event, Progress):
                    if event.total:
                        pct = min(100, int(100 * event.done / event.total) // 25 * 25)
                        key = (event.step,)
                        if self._last_pct.get(key) != pct:
                            self._last_pct[key] = pct
                            amount = (f"{human_bytes(event.done)} of {human_bytes(event.total)}"
                                      if event.unit == "bytes" else f"{event.done} of {event.total} {event.unit}")
                            item = f" — {event.item[:60]}" if event.item else ""
                            click.echo(f"  {event.step}: {pct}% ({amount}){item}", err=True)
                elif isinstance(event, LogLine):
                    if self.verbose:
                        src = f"[{event.source}] " if event.source else ""
                        click.echo(f"  {src}{event.line}", err=True)
                elif isinstance(event, WarningEvent):
                    warn(event.message, event.hint)
        except Exception:  # noqa: BLE001 - a reporter must never raise into the core
            pass

    def close(self) -> None:
        pass


class RichReporter:
    """Progress bars and a spinner per step on a terminal (rich), log lines shown dimmed."""

    def __init__(self, verbose: bool = False) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress as RProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)

        self.verbose = verbose
        self.console = _stderr_console()
        self.progress = RProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                                  console=self.console, transient=False)
        self._tasks: dict[str, int] = {}
        self._sub: list[int] = []  # bars of sub-steps known only from Progress events
        self._lock = threading.Lock()
        self.progress.start()
        self._download = DownloadColumn()

    def __call__(self, event) -> None:
        from ..progress import LogLine, Progress, StepFinished, StepStarted, WarningEvent

        try:
            with self._lock:
                if isinstance(event, StepStarted):
                    self._tasks[event.step] = self.progress.add_task(event.step, total=None, amount="")
                elif isinstance(event, StepFinished):
                    # Sub-step bars end with the step that contains them.
                    for sub in self._sub:
                        task = self.progress.tasks[[t.id for t in self.progress.tasks].index(sub)]
                        if not task.finished:
                            self.progress.update(sub, total=task.total or 1, completed=task.total or 1)
                            self.progress.stop_task(sub)
                    self._tasks = {k: v for k, v in self._tasks.items() if v not in self._sub}
                    self._sub = []
                    tid = self._tasks.pop(event.step, None)
                    if tid is None:
                        tid = self.progress.add_task(event.step, total=1, amount="")
                    mark = "[green]✓[/]" if event.ok else "[red]✖[/]"
                    task = self.progress.tasks[[t.id for t in self.progress.tasks].index(tid)]
                    extra = {} if task.total else {"amount": ""}  # drop the last log line shown
                    self.progress.update(tid, description=f"{mark} {event.step}",
                                         total=task.total or 1, completed=task.total or 1, **extra)
                    self.progress.stop_task(tid)
                elif isinstance(event, Progress):
                    tid = self._tasks.get(event.step)
                    if tid is None:
                        tid = self._tasks[event.step] = self.progress.add_task(f"  ↳ {event.step}", total=None,
                                                                               amount="")
                        self._sub.append(tid)
                    amount = (f"{human_bytes(event.done)}" + (f"/{human_bytes(event.total)}" if event.total else "")
                              if event.unit == "bytes" else
                              f"{event.done}" + (f"/{event.total}" if event.total else "") + f" {event.unit}")
                    if event.item:
                        amount = f"{amount} {event.item}"[:60]
                    self.progress.update(tid, total=event.total, completed=event.done, amount=amount)
                elif isinstance(event, LogLine):
                    if self.verbose:
                        src = f"[{event.source}] " if event.source else ""
                        self.progress.console.print(f"[dim]{src}{event.line}[/]", markup=True, highlight=False)
                    else:
                        # Show the latest line next to the running step, so long steps look alive.
                        running = list(self._tasks.items())
                        if running:
                            name, tid = running[-1]
                            self.progress.update(tid, amount=event.line.strip()[:50])
                elif isinstance(event, WarningEvent):
                    self.progress.console.print(f"[yellow]! {event.message}[/]" +
                                                (f"\n  What to do: {event.hint}" if event.hint else ""))
        except Exception:  # noqa: BLE001 - a reporter must never raise into the core
            pass

    def close(self) -> None:
        try:
            self.progress.stop()
        except Exception:  # noqa: BLE001
            pass


class _Reporting:
    def __init__(self) -> None:
        self.reporter = None

    def __enter__(self):
        if STATE.quiet:
            self.reporter = _QuietReporter()
        elif sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
            self.reporter = RichReporter(STATE.verbose)
        else:
            self.reporter = PlainReporter(STATE.verbose)
        return self.reporter

    def __exit__(self, *exc) -> bool:
        self.reporter.close()
        return False


class _QuietReporter:
    """With --quiet: only warnings, to stderr."""

    def __call__(self, event) -> None:
        from ..progress import WarningEvent

        if isinstance(event, WarningEvent):
            try:
                warn(event.message, event.hint)
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        pass


def without_warnings(reporter):
    """A reporter that drops WarningEvent events (e.g. a warning written for notebooks that does not
    apply to a one-shot command) and passes the rest on."""
    from ..progress import WarningEvent

    def report(event) -> None:
        if not isinstance(event, WarningEvent):
            reporter(event)

    return report


def reporting() -> _Reporting:
    """`with reporting() as reporter: core.op(..., reporter=reporter)`"""
    return _Reporting()
