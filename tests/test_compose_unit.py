"""labdeploy.server.compose without a server: the Compose v2 plugin's command line (Debian has no v2
plugin package, so a stand-in answers the detection as such a server would)."""

from __future__ import annotations

from labdeploy.server import compose


class _FakeV2Server:
    """Stand-in for a server with the Compose v2 plugin: Debian has no v2 plugin package, so no
    real v2 server can run here (DESIGN.md). It answers the detection script like such a server."""

    def __init__(self) -> None:
        self.calls: list = []

    def run(self, argv, **kw):
        self.calls.append((list(argv), kw))

        class R:
            stdout = "v2\n" if argv[:2] == ["sh", "-c"] else ""
            exit_status = 0

        return R()


def test_v2_argv_and_run_compose_arguments():
    server = _FakeV2Server()
    assert compose.compose_argv(server) == ["docker", "compose"]
    compose.run_compose(server, "dallinger/app", ["up", "-d", "web"], stdin=b"x", timeout=5, check=False)
    assert len(server.calls) == 2  # one detection, one command
    argv, kw = server.calls[1]
    assert argv == ["docker", "compose", "up", "-d", "web"]
    assert kw["cwd"] == "dallinger/app" and kw["stdin"] == b"x" and kw["timeout"] == 5 and kw["check"] is False
