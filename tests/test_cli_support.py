"""Running the real `labdeploy` command in tests: a subprocess of the venv's entry point,
with HOME pointing at a temporary folder (never the real ~/.ssh, ~/.docker, ~/.config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABDEPLOY = Path(sys.executable).parent / "labdeploy"
if not LABDEPLOY.exists():  # pragma: no cover - fall back to the repo's venv
    LABDEPLOY = REPO / ".venv" / "bin" / "labdeploy"


@dataclass
class Run:
    argv: list
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"$ labdeploy {' '.join(self.argv)}\n[exit {self.code}]\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class CLI:
    """`cli("servers", "list", "--json")` runs the command with this HOME and environment."""

    def __init__(self, home: Path, env: dict | None = None) -> None:
        self.home = Path(home)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("SSH_AUTH_SOCK", "DOCKER_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                                 "LABDEPLOY_SERVER", "LABDEPLOY_DEBUG")}
        self.env.update({"HOME": str(self.home), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
        self.env.update(env or {})

    def __call__(self, *argv, input: str | None = None, timeout: float = 300, env: dict | None = None) -> Run:
        argv = [str(a) for a in argv]
        proc = subprocess.run([str(LABDEPLOY), *argv], input=input if input is not None else "",
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.home),
                              env={**self.env, **(env or {})})
        return Run(argv, proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *argv, **kw) -> Run:
        r = self(*argv, **kw)
        assert r.code == 0, str(r)
        assert "Traceback" not in r.err, str(r)
        return r


class Terminal:
    """The command on a pseudo-terminal, as a person at a keyboard runs it: prompts appear and
    are answered with `send`. `expect(text)` waits until `text` shows up in the output."""

    def __init__(self, cli: CLI, *argv, timeout: float = 60) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.timeout = timeout
        self.buffer = ""
        env = {**cli.env, "TERM": "xterm", "COLUMNS": "120"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen([str(LABDEPLOY), *map(str, argv)], stdin=slave, stdout=slave, stderr=slave,
                                     env=env, cwd=str(cli.home), close_fds=True, start_new_session=True)
        os.close(slave)

    def _read(self, wait: float) -> bool:
        import select

        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the child closed the terminal
            return False
        if not data:
            return False
        self.buffer += data.decode("utf-8", "replace")
        return True

    def expect(self, text: str) -> str:
        import time

        deadline = time.monotonic() + self.timeout
        while text not in self.buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear; output so far:\n{self.buffer}")
            if not self._read(0.2) and self.proc.poll() is not None and not self._read(0.2):
                raise AssertionError(f"exited ({self.proc.returncode}) before {text!r}; output:\n{self.buffer}")
        return self.buffer

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self) -> int:
        import time

        deadline = time.monotonic() + self.timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.1):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"still running after {self.timeout} s; output:\n{self.buffer}")
        os.close(self.master)
        return self.proc.returncode
