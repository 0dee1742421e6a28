"""Errors carry a stable code and a remedy key; each front end words the remedy its own way.

The API (notebook cells) names Python calls, the CLI names commands and flags, the panels
name panels and buttons (labdeploy.remedies, labdeploy.cli.remedies,
labdeploy.widgets.remedies). The CLI's exit codes follow the error codes. No front end
changes an error after it is raised.
"""

from __future__ import annotations

import ast
import json
import re
import string
from pathlib import Path

import click
import pytest

from labdeploy import errors, remedies
from labdeploy.cli import _app, remedies as cli_remedies
from labdeploy.errors import LabdeployError, Remedy, UnknownApp, UnknownHostKey, ValidationError
from labdeploy.widgets import remedies as panel_remedies

PACKAGE = Path(__file__).resolve().parent.parent / "labdeploy"
FRONT_ENDS = ("cli", "widgets")
# Raised with the deploy rewrite's own words until it moves to this mechanism (remedy keys
# app.exists, app.update_unknown, data.kept and deploy.capacity are ready for it).
NOT_YET: set = set()
WAITING_FOR_DEPLOY: set = set()


def _cli_flags() -> set:
    flags = set()

    def walk(cmd):
        for p in cmd.params:
            flags.update(o for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    import labdeploy.cli  # noqa: F401 - registers every command on the group

    walk(_app.cli)
    return flags - {"--help", "--version"}


CLI_FLAGS = _cli_flags()
PYTHON_CALL = re.compile(r"(?<![\w$`-])[A-Za-z_][\w.]*\((?!\))[^)]*\)|(?<![\w$`-])[A-Za-z_]\w*\(\)|\b[a-z_]+=(?:True|False|None|'|\.\.\.|\[|\{|[a-z])")
PANEL = re.compile(r"\bpanels?\b", re.I)
PANEL_SHELL = re.compile(r"`\s*(?:labdeploy|docker|cd|sudo docker)\b|&&\s*docker\b")  # labdeploy's own work, by hand


def _flags_in(text: str) -> set:
    return {f for f in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text) if f in CLI_FLAGS}


def _names_a_command(text: str) -> bool:
    return "`labdeploy " in text or bool(_flags_in(text))


def _sample(key: str) -> Remedy:
    fields = {f for words in (remedies.API, cli_remedies.CLI, panel_remedies.PANELS)
              for _, f, _, _ in string.Formatter().parse(words.get(key, "")) if f}
    return Remedy(key, **{f: f"<{f}>" for f in fields})


def _used_keys() -> set:
    used = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Remedy" \
                    and node.args:
                used |= {c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant)
                         and isinstance(c.value, str)}
    return used


# ------------------------------------------------------------------ one table per front end

def test_every_front_end_has_words_for_every_remedy_key():
    keys = set(remedies.API)
    assert set(cli_remedies.CLI) == keys and set(panel_remedies.PANELS) == keys
    used = _used_keys()
    assert used <= keys, f"remedy keys without words: {sorted(used - keys)}"
    assert keys - used <= WAITING_FOR_DEPLOY, f"words for no remedy: {sorted(keys - used - WAITING_FOR_DEPLOY)}"


@pytest.mark.parametrize("key", sorted(remedies.API))
def test_the_api_words_a_remedy_as_python_and_names_no_command_or_panel(key):
    text = errors.LabdeployError("x", remedy=_sample(key)).hint
    assert text and "{" not in text.replace("{'", "").replace("={", "")
    assert not _names_a_command(text), text
    assert not PANEL.search(text), text


@pytest.mark.parametrize("key", sorted(cli_remedies.CLI))
def test_the_cli_words_a_remedy_as_commands_and_names_no_python_call_or_panel(key):
    text = cli_remedies.hint(errors.LabdeployError("x", remedy=_sample(key)))
    assert text and "{" not in text
    assert not PYTHON_CALL.search(text), text
    assert "labdeploy." not in text and not PANEL.search(text), text
    assert not (_flags_in(text) - CLI_FLAGS)


@pytest.mark.parametrize("key", sorted(panel_remedies.PANELS))
def test_the_panels_word_a_remedy_as_panels_and_buttons(key):
    text = panel_remedies.hint(errors.LabdeployError("x", remedy=_sample(key)))
    assert text and "{" not in text
    # Every way out is a button or a field: no Python call, no notebook cell, no labdeploy command
    # and no docker/cd command. Only steps outside labdeploy (ssh-keygen on the server, an
    # ssh-agent started before Jupyter) name a command, in backticks.
    assert not PYTHON_CALL.search(text), text
    assert "notebook" not in text.lower(), text
    assert not _names_a_command(text), text
    assert not PANEL_SHELL.search(text), text


@pytest.mark.parametrize("key", sorted(k for k in remedies.API if not k.startswith("api.")
                                       and k not in ("database.scram_verifier", "registry.temporary_login")))
def test_the_three_words_differ_where_the_action_differs(key):
    error = errors.LabdeployError("x", remedy=_sample(key))
    api, cli, panel = error.hint, cli_remedies.hint(error), panel_remedies.hint(error)
    if key in ("query.params", "query.one_select", "deploy.capacity"):
        return  # the same advice in a terminal and a panel (they run no queries of their own)
    assert len({api, cli, panel}) == 3, (api, cli, panel)


def test_a_remedy_is_worded_with_its_args_then_the_front_ends_context_then_a_placeholder():
    exc = LabdeployError("web of stroop is exited.", remedy=Remedy("service.start", app="stroop", service="web"))
    assert "restart('stroop', server, ['web'])" in exc.hint
    assert "`labdeploy restart --app stroop web`" in cli_remedies.hint(exc, app="other")
    assert "Restart…" in panel_remedies.hint(exc) and "web" in panel_remedies.hint(exc)
    bare = LabdeployError("x", remedy=Remedy("app.exists"))
    assert "`labdeploy destroy --app pilot`" in cli_remedies.hint(bare, app="pilot")
    assert "`labdeploy destroy --app NAME`" in cli_remedies.hint(bare)


def test_a_plain_hint_is_the_same_in_every_front_end():
    exc = UnknownApp("There is no app 'x'.", "Check the name. Apps on this server: a, b.")
    assert exc.hint == cli_remedies.hint(exc) == panel_remedies.hint(exc) == "Check the name. Apps on this server: a, b."
    assert str(exc) == "There is no app 'x'.\nWhat to do: Check the name. Apps on this server: a, b."


def test_a_class_remedy_serves_the_front_ends_while_the_raise_keeps_its_api_hint():
    class Exists(LabdeployError):
        code = "app.exists"
        remedy = Remedy("app.exists")

    exc = Exists("An app named 'pilot' is already deployed.", "use update()")
    assert exc.hint == "use update()" and "--update" in cli_remedies.hint(exc, app="pilot")
    assert "Update" in panel_remedies.hint(exc)


def test_every_rendering_is_redacted():
    secret = "postgresql://app:s3cr3t-Pa55@db/app"
    exc = LabdeployError(f"failed: {secret}", remedy=Remedy("file.overwrite", path=secret))
    for text in (exc.message, exc.hint, str(exc), cli_remedies.hint(exc), panel_remedies.hint(exc), repr(exc.remedy)):
        assert "s3cr3t-Pa55" not in text
    words = {"k": "Use {url} (PASSWORD=hunter2xyz)"}
    assert "hunter2xyz" not in remedies.render(words, Remedy("k", url=secret))


# ------------------------------------------------------------------ raises in the package

def _error_classes() -> dict:
    import importlib
    import pkgutil

    import labdeploy

    for info in pkgutil.walk_packages(labdeploy.__path__, "labdeploy."):
        if not info.name.startswith("labdeploy.widgets"):
            importlib.import_module(info.name)
    found, todo = {}, [LabdeployError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


CLASSES = _error_classes()
GENERIC = {"LabdeployError", "ValidationError", "RemoteError"}


def _core_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.split("/")[0] not in FRONT_ENDS and rel not in NOT_YET:
            yield rel, path


def _constructions(path):
    src = path.read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in CLASSES and issubclass(CLASSES[name], LabdeployError):
                yield name, node, src


def _texts(node) -> str:
    return " ".join(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))


def test_every_error_raised_in_the_core_has_a_code_of_its_own():
    missing = [f"{rel}:{node.lineno} {name}" for rel, path in _core_files() for name, node, _ in _constructions(path)
               if name in GENERIC and not any(k.arg == "code" for k in node.keywords)]
    assert not missing, "\n".join(missing)


def test_every_error_class_has_its_own_code():
    bare = [name for name, cls in CLASSES.items() if "code" not in vars(cls) and cls.__module__.startswith("labdeploy")
            and not any(cls.__module__.endswith(f.replace("/", ".")[:-3]) for f in NOT_YET)]
    assert not bare, bare


def test_plain_hints_in_the_core_name_no_python_call_no_command_and_no_panel():
    """Advice that depends on the front end is a Remedy; what stays plain reads the same everywhere."""
    found = []
    for rel, path in _core_files():
        tree = ast.parse(path.read_text())
        hints = [node.args[1] for _, node, _ in _constructions(path) if len(node.args) > 1]
        hints += [k.value for _, node, _ in _constructions(path) for k in node.keywords if k.arg == "hint"]
        hints += [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id.endswith("hint") for t in n.targets)]
        for node in hints:
            text = _texts(node)
            if PYTHON_CALL.search(text) or _names_a_command(text) or PANEL.search(text):
                found.append(f"{rel}:{node.lineno}: {text[:120]}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------ exit codes and the CLI

@pytest.mark.parametrize("code, exit_", [
    ("invalid", 2), ("invalid.app_name", 2), ("invalid.experiment.link_outside", 2), ("app.unknown", 2),
    ("server.unknown", 2), ("service.unknown", 2), ("cli.usage", 2),
    ("service.not_running", 3), ("service.crashing", 3), ("service.restart_timeout", 3), ("cli.not_ready", 3),
    ("ssh.host_key.unknown", 4), ("confirmation.required", 4), ("cli.needs_confirmation.declined", 4),
    ("error", 1), ("remote.failed", 1), ("ssh.host_key.changed", 1), ("export.required", 1), ("appx.unknown", 1),
])
def test_exit_codes_follow_error_codes(code, exit_):
    assert cli_remedies.exit_code(code) == exit_


def test_the_classes_codes_give_the_exit_codes_they_always_had():
    for exc, exit_ in [(ValidationError("bad"), 2), (UnknownApp("no app"), 2),
                       (UnknownHostKey("new", host="h", port=22, key_type="k", fingerprint="SHA256:x"), 4),
                       (CLASSES["ServerNotFound"]("no server"), 2), (CLASSES["ServiceNotRunning"]("down"), 3),
                       (CLASSES["RestartTimeout"]("slow"), 3), (CLASSES["ExportRequired"]("no export"), 1),
                       (CLASSES["UsageProblem"]("bad flag"), 2), (CLASSES["NeedsConfirmation"]("yes?"), 4),
                       (CLASSES["NotReady"]("not yet"), 3), (CLASSES["CliError"]("failed"), 1)]:
        assert cli_remedies.exit_code(exc.code) == exit_, exc.code


def test_help_lists_every_error_code_that_has_an_exit_code_of_its_own():
    text = cli_remedies.exit_codes_help()
    for code in cli_remedies.EXIT_CODES:
        assert code in text


@pytest.fixture
def failing_command():
    raised = {}

    @click.command("t-remedy-fail")
    @click.option("--app", "app")
    @_app.common_options
    @_app.with_hints
    def command(app):
        raise raised["exc"]

    _app.cli.add_command(command)
    _app.STATE.__init__()
    yield raised
    _app.cli.commands.pop("t-remedy-fail", None)
    _app.STATE.__init__()


def test_the_cli_prints_the_remedy_in_its_words_exits_by_the_code_and_leaves_the_error_alone(failing_command, capsys):
    exc = CLASSES["ExportRequired"]("stroop still has its database.",
                                    remedy=Remedy("export.before_destroy", app="stroop"))
    before = (dict(vars(exc)), exc.hint, str(exc))
    failing_command["exc"] = exc
    assert _app.main(["t-remedy-fail", "--app", "stroop", "--json"]) == 1
    out, err = capsys.readouterr()
    assert "`labdeploy export --app stroop`" in err and "--no-export-check" in err
    assert "labdeploy.export.export(" not in err and "panel" not in err.lower()
    doc = json.loads(out)["error"]
    assert doc["code"] == "export.required" and doc["exit_code"] == 1 and "--final-export" in doc["hint"]
    assert (dict(vars(exc)), exc.hint, str(exc)) == before  # not mutated


def test_the_command_context_fills_a_remedy_the_error_left_open(failing_command, capsys):
    class Exists(LabdeployError):
        code = "app.exists"
        remedy = Remedy("app.exists")

    failing_command["exc"] = Exists("An app named 'pilot' is already deployed.", "use update()")
    assert _app.main(["t-remedy-fail", "--app", "pilot"]) == 1
    err = capsys.readouterr().err
    assert "add --update" in err and "`labdeploy destroy --app pilot`" in err and "update()" not in err


def test_a_core_validation_error_exits_2_with_its_code(failing_command, capsys):
    failing_command["exc"] = ValidationError("The app name 'X' can't be used.", "Use lowercase.",
                                             code="invalid.app_name")
    assert _app.main(["t-remedy-fail", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "invalid.app_name"


def test_an_errors_hint_can_not_be_rewritten_and_copies_keep_it():
    import copy
    import pickle

    exc = LabdeployError("x", "y", code="some.code")
    for name, value in (("hint", "z"), ("remedy", Remedy("confirm")), ("code", "other"), ("message", "m")):
        with pytest.raises(AttributeError):
            setattr(exc, name, value)
    for twin in (copy.copy(exc), pickle.loads(pickle.dumps(exc))):
        assert (twin.message, twin.hint, twin.code, str(twin)) == (exc.message, exc.hint, exc.code, str(exc))
    key = UnknownHostKey("new", host="h", port=22, key_type="k", fingerprint="SHA256:x",
                         remedy=Remedy("ssh.host_key.confirm", fingerprint="SHA256:x"))
    assert pickle.loads(pickle.dumps(key)).hint == key.hint
    remedy = Remedy("confirm", call="f")
    with pytest.raises(AttributeError):
        remedy.key = "other"


def test_no_front_end_assigns_to_an_errors_hint():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                assert not any(isinstance(t, ast.Attribute) and t.attr in ("hint", "message", "remedy", "code")
                               and getattr(t.value, "id", "") in ("exc", "err", "error", "e") for t in targets), \
                    f"{path}:{node.lineno}"


def test_a_panel_shows_an_errors_remedy_in_the_panels_words():
    from labdeploy.widgets.common import error_html

    exc = CLASSES["ExportRequired"]("stroop still has its database.", remedy=Remedy("export.before_destroy", app="stroop"))
    shown = error_html(exc)
    assert "Export data panel" in shown and "Export, then destroy" in shown
    assert "labdeploy.export.export(" not in shown and "--no-export-check" not in shown
    plain = error_html(UnknownApp("There is no app 'x'.", "Check the name."))
    assert "Check the name." in plain


def test_a_service_that_is_down_exits_3_with_the_commands_to_start_it(failing_command, capsys):
    failing_command["exc"] = CLASSES["ServiceNotRunning"]("Can't read the logs: clock of stroop is exited, not running.",
                                                          remedy=Remedy("service.start", app="stroop", service="clock"))
    assert _app.main(["t-remedy-fail", "--app", "stroop"]) == 3
    err = capsys.readouterr().err
    assert "`labdeploy restart --app stroop clock`" in err and "`labdeploy logs --app stroop --service clock`" in err


def _widget_files():
    return sorted((PACKAGE / "widgets").glob("*.py"))


def test_hints_written_in_the_panels_speak_in_buttons_and_fields():
    """What a panel itself says to do (an error's hint, a warning's hint) names no Python call,
    no command and no notebook file: the researcher is looking at buttons and fields."""
    found = []
    for path in _widget_files():
        tree = ast.parse(path.read_text())
        hints = [node.args[1] for _, node, _ in _constructions(path) if len(node.args) > 1]
        hints += [k.value for _, node, _ in _constructions(path) for k in node.keywords if k.arg == "hint"]
        hints += [n.args[1] for n in ast.walk(tree) if isinstance(n, ast.Call) and len(n.args) > 1
                  and getattr(n.func, "attr", getattr(n.func, "id", "")) in ("show_warning", "warning_html")]
        for node in hints:
            text = _texts(node)
            if PYTHON_CALL.search(text) or _names_a_command(text) or ".ipynb" in text:
                found.append(f"widgets/{path.name}:{node.lineno}: {text[:120]}")
    assert not found, "\n".join(found)


def test_the_panels_count_in_words_not_with_an_s_in_brackets():
    """'1 app', '2 apps' (common.plural), never '1 app(s)'."""
    found = [f"widgets/{path.name}:{node.lineno}: {node.value[:80]}" for path in _widget_files()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and "(s)" in node.value]
    assert not found, "\n".join(found)
