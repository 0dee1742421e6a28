"""Running this checkout's `labdeploy` command (python -m labdeploy.cli with the repository first
on the path), with a temporary HOME and the testbed registered as `tb`."""

from __future__ import annotations

import subprocess
import sys

from test_cli_support import CLI, REPO, Run


class RepoCLI(CLI):
    def __call__(self, *argv, input: str | None = None, timeout: float = 300, env: dict | None = None) -> Run:
        argv = [str(a) for a in argv]
        proc = subprocess.run([sys.executable, "-m", "labdeploy.cli", *argv], input=input or "",
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.home),
                              env={**self.env, "PYTHONPATH": str(REPO), **(env or {})})
        return Run(argv, proc.returncode, proc.stdout, proc.stderr)


def registered_cli(testbed, home) -> RepoCLI:
    cli = RepoCLI(home)
    s = testbed["ssh"]
    cli.ok("servers", "add", "tb", "--host", s["host"], "--user", s["user"], "--key", s["key"],
           "--trust-host-key", s["host_key_fingerprint"])
    return cli
