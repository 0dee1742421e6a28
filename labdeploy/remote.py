"""The SSH layer's entry point: one `Remote` per server, one SSH transport reused for everything.

Commands are argv lists, quoted here; secrets travel on stdin. Host keys are never accepted
silently: an unknown key raises `UnknownHostKey` carrying its SHA256 fingerprint, and only
`trust_host_key(fingerprint)` stores it.

`Remote` is put together from the parts in `labdeploy/ssh/`: `connection` (connecting,
reconnecting, running commands), `files` (SFTP), `forwarding` (tunnels) and `hostkeys`
(known_hosts). Who opens and closes connections for a server name is `labdeploy.ssh.pool`.
"""

from __future__ import annotations

from .ssh.connection import STDERR_TAIL, ChunkCallback, Commands, Connection, LineCallback, Result
from .ssh.files import Files, ProgressCallback
from .ssh.forwarding import Forwarding
from .ssh.hostkeys import HostKeys, HostKeyStatus, KnownHosts, fingerprint, known_hosts_name, revoked_keys


class Remote(Connection, Commands, Files, Forwarding, HostKeys):
    """One server, reached over one reused SSH connection.

    `Remote(host, port=None, user=None, *, key_filename=None, passphrase=None, password=None,
    known_hosts=None, ssh_config=None, use_agent=True, connect_timeout=10.0, keepalive=15)`;
    missing values come from ~/.ssh/config. Thread-safe: threads share one Remote, each
    command on its own channel.
    """


__all__ = ["Remote", "Result", "HostKeyStatus", "KnownHosts", "fingerprint", "known_hosts_name", "revoked_keys",
           "LineCallback", "ChunkCallback", "ProgressCallback", "STDERR_TAIL"]
