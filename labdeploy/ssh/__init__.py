"""The SSH layer: reaching a researcher's server.

`labdeploy.remote.Remote` (the entry point) is put together from `connection` (connecting,
reconnecting, running commands), `files` (SFTP), `forwarding` (tunnels) and `hostkeys`
(known_hosts; never accept an unknown key silently). `pool` decides who opens and closes
connections for a server name; `servers` is the list of registered servers; `keys` the
researcher's SSH keys and the first-contact steps (host key, ssh-copy-id, key login).

Nothing here is imported by this file: `import labdeploy.ssh.pool` stays light for the CLI.
"""
