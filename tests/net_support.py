"""A network a test can break: a TCP relay to the server's sshd, cut like a dropped link."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """A TCP relay to the server's sshd that a test can cut, as a network drop would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.down = False  # closed for good: a reconnect finds no way through
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:  # a thread blocked in accept() still takes connections after close()
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)

    def cut(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.down = True
        with contextlib.suppress(OSError):  # wakes the blocked accept(); new connections are refused
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut()


def relayed_remote(testbed: dict, folder):
    """(relay, Remote) for the testbed's sshd through a Relay the test can cut; the Remote
    trusts the server's host key under the relay's address."""
    from labdeploy.remote import Remote

    s = testbed["ssh"]
    relay = Relay(s["host"], s["port"])
    kh = folder / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{relay.port} " + s["known_hosts_line"].split(" ", 1)[1] + "\n")
    return relay, Remote("127.0.0.1", relay.port, s["user"], key_filename=s["key"], known_hosts=kh, use_agent=False)
