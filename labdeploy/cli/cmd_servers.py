"""`labdeploy servers ...` and `labdeploy registry login`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import names
from ..errors import RemoteError, UnknownHostKey, ValidationError
from . import _ui
from . import remedies as cli_remedies
from ._app import (CONTEXT_SETTINGS, cli, common_options, connect, core, open_server, pick_server, run_pool, server_option, yes_option)
from ._ui import CliError, NotReady, UsageProblem

TRUST_HELP = ("Trust the server's host key only if its fingerprint is exactly this (SHA256:...), "
              "for scripts. Without it, a new key's fingerprint is shown and you are asked. Behind a jump host, "
              "give it once for each new key (the jump host's and the server's).")


@cli.group(context_settings=CONTEXT_SETTINGS)
@common_options
def servers() -> None:
    """Register, check and prepare the servers you deploy to.

    \b
    Examples:
      labdeploy servers add lab --host lab.example.org --user alice
      labdeploy servers import
      labdeploy servers list
      labdeploy servers check --server lab
      labdeploy servers prepare --server lab --domain experiments.example.org
      labdeploy servers remove lab --yes
    """


def _validated(fn, value):
    with _ui.usage_errors(ValidationError):
        return fn(value)


@servers.command("add", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--host", required=True, help="The server's host name or IP address.")
@click.option("--user", "user", required=True, help="Your login name on the server.")
@click.option("--port", default=22, show_default=True, type=int, help="The server's SSH port.")
@click.option("--key", "key", type=click.Path(dir_okay=False), default=None,
              help="Private key to log in with. Default: your ssh-agent and ~/.ssh keys.")
@click.option("--jump", "jump", metavar="USER@BASTION[:PORT]", default=None,
              help="Reach the server through this jump host (like `ssh -J`; several separated by commas, "
                   "first hop first; 'none' to ignore a ProxyJump in ~/.ssh/config). Its host key is confirmed "
                   "like the server's; it is logged in to with your key or ssh-agent. Default: as ~/.ssh/config "
                   "says (ProxyJump, ProxyCommand).")
@click.option("--trust-host-key", "trust", metavar="SHA256:...", multiple=True, help=TRUST_HELP)
@click.option("--copy-key", is_flag=True,
              help="Log in once with your password and add your public key to the server (like "
                   "ssh-copy-id); a new key is generated first if there is none.")
@click.option("--password-stdin", is_flag=True, help="With --copy-key: read the password from stdin.")
@click.option("--replace", is_flag=True, help="Replace a server already registered under NAME.")
@click.option("--no-verify", is_flag=True,
              help="Only write the registration on this computer: no connection at all (the host key is "
                   "confirmed on first use).")
@common_options
def servers_add(name, host, user, port, key, jump, trust, copy_key, password_stdin, replace, no_verify):
    """Register a server under a short NAME (like `dallinger docker-ssh servers add`).

    On first contact the server's host key fingerprint is shown and must be confirmed (or
    given with --trust-host-key); a changed key is refused. Then labdeploy logs in with your
    key to check, and saves the server in its list.

    \b
    Examples:
      labdeploy servers add lab --host lab.example.org --user alice
      labdeploy servers add lab --host 203.0.113.7 --user alice --copy-key
      printf '%s\\n' "$PW" | labdeploy servers add lab --host 203.0.113.7 --user alice \\
          --copy-key --password-stdin --trust-host-key SHA256:eycBinPsUBRvdw...
      labdeploy servers add lab --host lab.example.org --user alice --no-verify
      labdeploy servers add lab --host 10.0.3.2 --user alice --jump alice@bastion.example.org
    """
    servers_mod = core("servers")
    keys = core("keys")
    key_path = _add_options_checked(servers_mod, name, host, user, port, key, trust, copy_key, password_stdin,
                                    replace, no_verify)
    jump = _validated(names.jump, jump) if jump is not None else None
    candidate = servers_mod.Server(name, host, port, user, str(key_path) if key_path else None, jump).validated()

    if no_verify:
        # Only the local list changes: no host key lookup, no login, no network at all.
        _register(servers_mod, candidate, replace, " without contacting it; its host key is confirmed on first "
                                                   "use (`labdeploy servers check`)")
        return

    # 1. The host key: never trusted silently. A new key is shown and asked for (or checked
    #    against --trust-host-key); a changed one is refused by the SSH layer with its explanation.
    #    Behind a jump host, its key comes first (the server's is read through it).
    probe = run_pool().get(candidate)
    statuses = probe.host_key_statuses()
    if statuses[-1].state != "known":
        try:
            connect(probe, trust=trust, name=name, has_trust_option=True)
        except RemoteError as exc:
            # Only the host key matters here: a login that fails (no key copied yet) is fine
            # once the key is trusted.
            if isinstance(exc, UnknownHostKey) or probe.host_key_status().state != "known":
                raise
    else:
        presented = {s.fingerprint for s in statuses}
        wrong = [t.strip() for t in trust if t.strip() not in presented]
        if wrong:
            raise CliError(f"The server {host} presents the host key {statuses[-1].fingerprint}"
                           + (f" (its jump host {statuses[0].fingerprint})" if len(statuses) > 1 else "")
                           + f", not the {' or '.join(wrong)} you gave.",
                           "Check the fingerprint with the server's administrator.")

    # 2. Optionally copy the public key (the ssh-copy-id step).
    if copy_key:
        key_path = _copy_key(keys, key_path, host, port, user, password_stdin, jump)
        candidate = servers_mod.Server(name, host, port, user, str(key_path) if key_path else None,
                                       jump).validated()

    # 3. Check that the key login works, then register.
    remote = run_pool().get(candidate)
    connect(remote, trust=trust, name=name, has_trust_option=True)
    remote.run(["true"], timeout=30)
    _register(servers_mod, candidate, replace, "; key login works")


def _add_options_checked(servers_mod, name, host, user, port, key, trust, copy_key, password_stdin, replace,
                         no_verify):
    """Every check of `servers add` that needs no connection; returns the key's absolute path."""
    _validated(names.server_name, name)
    _validated(names.host, host)
    _validated(names.user, user)
    _validated(names.port, port)
    if key is not None:
        _validated(servers_mod.key_path, key)
    if password_stdin and not copy_key:
        raise UsageProblem("--password-stdin only makes sense with --copy-key.",
                           "Add --copy-key to copy your public key to the server with that password.")
    if no_verify and (copy_key or trust):
        given = "--copy-key" if copy_key else "--trust-host-key"
        raise UsageProblem(f"{given} needs a connection to the server, and --no-verify means none.",
                           f"Leave out --no-verify to check the server now, or leave out {given} to only register "
                           "it (its host key is then confirmed on first use).")
    if not replace and name in [s.name for s in servers_mod.list_servers()]:
        existing = servers_mod.get(name)
        raise UsageProblem(f"A server named {name!r} is registered already ({existing.label}).",
                           "Choose another name, or pass --replace to update it.")
    key_path = Path(key).expanduser().absolute() if key else None
    if key_path is not None and not copy_key and not key_path.is_file():
        # Said now, before any connection (--copy-key creates a missing key).
        raise UsageProblem(f"The key file {key_path} does not exist.",
                           "Give the path of your private key (e.g. ~/.ssh/id_ed25519), or add --copy-key to "
                           "create one and copy it to the server.")
    return key_path


def _copy_key(keys, key_path, host, port, user, password_stdin, jump=None):
    """The ssh-copy-id step (a key is made first if there is none); returns the key used."""
    path = key_path or keys.default_key_path()
    if not path.exists():
        new = keys.generate_key(path)
        _ui.info(f"Generated a new key {new.path} ({new.fingerprint}).")
        key_path = path
    password = _ui.read_secret(f"password of {user} on {host}", from_stdin=password_stdin)
    added = keys.copy_key(host, user, password, path, port=port, jump=jump)
    del password
    _ui.info(f"{'Added' if added else 'Found'} your public key {path}.pub on the server.")
    return key_path


def _register(servers_mod, candidate, replace: bool, said: str) -> None:
    """Save the server in the list; `said` ends the sentence that says so."""
    server = servers_mod.add(candidate.name, candidate.host, candidate.user, candidate.port, candidate.key,
                             jump=candidate.jump, replace=replace)
    _ui.ok(f"Registered {server.name} ({server.label}){said}.")
    _ui.output({"name": server.name, "host": server.host, "port": server.port, "user": server.user,
                "key": server.key, "jump": server.jump})


@servers.command("list", context_settings=CONTEXT_SETTINGS)
@common_options
def servers_list():
    """Show the registered servers.

    \b
    Examples:
      labdeploy servers list
      labdeploy servers list --json
    """
    servers_mod = core("servers")
    df = servers_mod.table()
    _ui.output(df, render=lambda d: _ui.table(d, empty="No servers registered yet. Add one with "
                                                     "`labdeploy servers add NAME --host HOST --user USER`."))


@servers.command("import", context_settings=CONTEXT_SETTINGS)
@click.option("--from", "directory", type=click.Path(file_okay=False), default=None,
              help="Dallinger's hosts folder (default ~/.dallinger/docker-ssh/hosts).")
@common_options
def servers_import(directory):
    """Register the servers Dallinger already knows (`dallinger docker-ssh servers add`).

    Each is named after its host. Host keys are confirmed on first use, as always.

    \b
    Examples:
      labdeploy servers import
      labdeploy servers import --from ~/.dallinger/docker-ssh/hosts --json
    """
    servers_mod = core("servers")
    with _ui.reporting() as reporter:
        added = servers_mod.import_dallinger_hosts(directory, reporter=reporter)
    rows = [{"name": s.name, "host": s.host, "port": s.port, "user": s.user} for s in added]
    _ui.info(f"Imported {len(rows)} server(s) from Dallinger." if rows else "No new servers to import from Dallinger.")
    _ui.output(rows, render=lambda r: _ui.table(r, columns=["name", "host", "port", "user"], empty="") if r else None)


@servers.command("remove", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@yes_option
@common_options
def servers_remove(name, yes):
    """Forget a registered server (only this computer's list; nothing on the server changes).

    \b
    Examples:
      labdeploy servers remove lab
      labdeploy servers remove lab --yes
    """
    servers_mod = core("servers")
    pick_server(name)  # unknown name -> usage error
    server = servers_mod.get(name)
    _ui.confirm(f"Forget the server {name!r} ({server.label})?", yes=yes)
    servers_mod.remove(name, confirm=True)
    _ui.ok(f"Removed {name} from the server list.")
    _ui.output({"removed": name})


@servers.command("check", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--trust-host-key", "trust", metavar="SHA256:...", multiple=True, help=TRUST_HELP)
@click.option("--domain", default=None,
              help="Check that this domain's DNS points at the server (default: the domain it was prepared with).")
@common_options
def servers_check(server, trust, domain):
    """Check that a server is ready: login, Docker, Compose, memory, disk, ports, shared services,
    and for a public domain its DNS.

    Exits with 3 when a check that blocks deploying fails.

    \b
    Examples:
      labdeploy servers check
      labdeploy servers check --server lab --json
      labdeploy servers check --domain experiments.example.org
    """
    readiness = core("readiness")
    if domain:
        with _ui.usage_errors(ValidationError):
            core("stack").check_fields(domain=domain)
    name = pick_server(server)
    remote = run_pool().get(name)
    try:
        connect(remote, trust=trust, name=name, has_trust_option=True)
    except UnknownHostKey:
        raise
    except RemoteError:
        pass  # the readiness table's first row explains it
    with _ui.reporting() as reporter:
        df = readiness.check(remote, reporter, domain=domain)
    ready = readiness.is_ready(df)
    df = cli_remedies.readiness_table(df)  # what to do, in this front end's words

    def render(d):
        rows = d.copy()
        rows["ok"] = rows["ok"].map(lambda v: "✓" if v else "✖")
        _ui.table(rows, title=f"Readiness of {name}")

    _ui.output(df, render=render)
    # This computer's side: its Docker is only needed by the modes that build here.
    _ui.info(f"This computer: {core('localdocker').probe().summary()}.")
    if not ready:
        failed = ", ".join(df.loc[~df["ok"].astype(bool), "check"])
        raise NotReady(f"{name} is not ready: {failed}.", "Fix the failed checks (see the hints above), then check again.")
    stack_row = df[df["id"] == "stack"]
    if len(stack_row) and not bool(stack_row["ok"].all()):
        _ui.info("Ready to prepare: run `labdeploy servers prepare`.")
    else:
        _ui.ok(f"{name} is ready to deploy.")


@servers.command("prepare", context_settings=CONTEXT_SETTINGS)
@server_option
@click.option("--domain", default=None, help="Apps become http(s)://<app>.<domain>/ (local names like "
                                             "'localhost' are served over plain HTTP).")
@click.option("--email", default=None, help="Contact address for Let's Encrypt certificates.")
@click.option("--acme-ca", "acme_ca", default=None, metavar="URL|staging",
              help="ACME directory certificates come from: your lab's own CA (e.g. step-ca), or 'staging' for "
                   "Let's Encrypt's staging directory (dry runs, no rate limits to hit); '' for Let's Encrypt.")
@click.option("--acme-ca-root", "acme_ca_root", default=None, metavar="FILE",
              help="PEM file (on this computer) of the CA that signs the ACME server's own HTTPS certificate; "
                   "'' for none.")
@click.option("--postgres-image", default=None, help="PostgreSQL image (default postgres:15).")
@click.option("--caddy-image", default=None, help="Caddy image (default caddy:2).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 80).")
@click.option("--https-port", type=int, default=None, help="HTTPS port (default 443).")
@click.option("--bind-address", default=None, help="Listen only on this IP address (default: all).")
@click.option("--max-connections", "max_connections", type=int, default=None,
              help="PostgreSQL max_connections (default 100).")
@click.option("--redis-image", default=None,
              help="Redis image for apps deployed here that don't choose their own (default redis:7).")
@click.option("--base-image", default=None,
              help="Base image (BASE_IMAGE build argument) for apps deployed here that don't choose their own.")
@click.option("--pgbouncer-image", default=None,
              help="PgBouncer image for the apps' connection poolers (default: labdeploy's choice).")
@common_options
def servers_prepare(server, domain, email, acme_ca, acme_ca_root, postgres_image, caddy_image, http_port, https_port,
                    bind_address, max_connections, redis_image, base_image, pgbouncer_image):
    """Set up the shared services (PostgreSQL and Caddy in ~/dallinger) and start them.

    Safe to run again. Options you leave out keep the values the server was prepared with
    before (or the defaults on a new server).

    \b
    Examples:
      labdeploy servers prepare
      labdeploy servers prepare --server lab --domain experiments.example.org --email me@example.org
      labdeploy servers prepare --acme-ca staging
      labdeploy servers prepare --acme-ca https://ca.lab.example.org/acme/acme/directory --acme-ca-root root_ca.crt
    """
    stack = core("stack")
    name = pick_server(server)
    given = {"domain": domain, "email": email, "acme_ca": acme_ca, "acme_ca_root": acme_ca_root,
             "postgres_image": postgres_image, "caddy_image": caddy_image,
             "http_port": http_port, "https_port": https_port, "bind_address": bind_address,
             "postgres_max_connections": max_connections, "redis_image": redis_image, "base_image": base_image,
             "pgbouncer_image": pgbouncer_image}
    with _ui.usage_errors(ValidationError):
        stack.check_fields(**given)  # before connecting; the rest comes from the server's stack.json
    remote = open_server(name)
    base = stack.read_settings(remote) or stack.StackSettings()
    settings = stack.StackSettings.from_dict({**base.__dict__, **{k: v for k, v in given.items() if v is not None}})
    with _ui.reporting() as reporter:
        result = stack.prepare(remote, settings, reporter)
    _ui.ok(f"The shared services on {name} are running (PostgreSQL, Caddy).")
    _ui.output({"server": name, "settings": settings, "written": getattr(result, "written", []),
                "unchanged": getattr(result, "unchanged", []),
                "password_created": getattr(result, "password_created", False)},
               render=lambda v: _ui.output(v["settings"]))


# ------------------------------------------------------------------ registry


@cli.group(context_settings=CONTEXT_SETTINGS)
@common_options
def registry() -> None:
    """Docker registry logins (for the `registry` transfer mode).

    \b
    Examples:
      labdeploy registry login registry.gitlab.com --username alice
      printf '%s\\n' "$TOKEN" | labdeploy registry login registry.gitlab.com -u alice --password-stdin
    """


@registry.command("login", context_settings=CONTEXT_SETTINGS)
@click.argument("address", required=False)
@click.option("--username", "-u", required=True, help="Your registry user name.")
@click.option("--password-stdin", is_flag=True, help="Read the password (or access token) from stdin.")
@server_option
@click.option("--server-only", is_flag=True, help="Log in on the server only, not on this computer.")
@click.option("--remote-docker-config", default=None, metavar="DIR",
              help="Keep the server's login in this folder (relative to your home on the server, without "
                   "'..'; an absolute path must be inside that home) instead of the server user's ~/.docker.")
@click.option("--image-base-name", default=None, metavar="REGISTRY/PATH",
              help="Also set docker_image_base_name in ~/.dallingerconfig (where images are pushed).")
@common_options
def registry_login(address, username, password_stdin, server, server_only, remote_docker_config, image_base_name):
    """Log in to a Docker registry on the server (and on this computer), as the seed's
    `docker login` on both machines. The password travels only over stdin / the SSH channel.

    ADDRESS is the registry's host[:port]; left out, it is taken from docker_image_base_name
    in ~/.dallingerconfig (or from --image-base-name).

    Without a Docker credential helper here, the local login is checked but not stored (it
    would be plaintext in ~/.docker/config.json); the server's login is kept by its Docker.

    \b
    Examples:
      labdeploy registry login registry.gitlab.com --username alice
      printf '%s\\n' "$TOKEN" | labdeploy registry login registry.example.org:5000 -u alice \\
          --password-stdin --server lab --image-base-name registry.example.org:5000/lab
    """
    reg = core("registry")
    images = core("images")
    name = pick_server(server)
    if address is None:
        base = image_base_name or core("dallingerconfig").get_base_name()
        address = images.registry_of(base) if base else None
        if not address:
            raise UsageProblem("Which registry? No ADDRESS was given and ~/.dallingerconfig names none "
                               "(docker_image_base_name).",
                               "Give the registry address, e.g. `labdeploy registry login registry.gitlab.com "
                               "-u alice`, or --image-base-name REGISTRY/PATH.")
    with _ui.usage_errors():
        address = reg.registry_address(address)
        if image_base_name is not None:
            names.image_repository(image_base_name)
        if remote_docker_config is not None and not remote_docker_config.startswith("/"):
            reg.remote_docker_config(remote_docker_config)  # an absolute one needs the server's home
    creds = _ui.read_credentials(address, username, from_stdin=password_stdin)
    remote = open_server(name)
    if remote_docker_config is not None:
        with _ui.usage_errors():  # before either login
            remote_docker_config = reg.remote_docker_config(remote_docker_config, remote.home)
    result = {"registry": address, "username": username, "server": name}
    with _ui.reporting() as reporter:
        if not server_only:
            local = reg.login_local(creds, reporter=_ui.without_warnings(reporter))
            stored = getattr(local, "stored", "")
            if stored.startswith("memory"):
                stored = "checked, not stored"
                _ui.warn("This computer has no Docker credential helper, so the login was checked but not "
                         "stored (Docker would keep the password unencrypted in ~/.docker/config.json).",
                         "For registry-mode deploys pass --registry-user to `labdeploy deploy`, or set up a "
                         "credential helper (https://docs.docker.com/reference/cli/docker/login/#credential-stores).")
            result["local"] = stored
        reg.login_server(remote, creds, docker_config=remote_docker_config, reporter=reporter)
        result["on_server"] = True
    if image_base_name is not None:
        cfg = core("dallingerconfig")
        path = cfg.set_base_name(image_base_name)
        result["docker_image_base_name"] = image_base_name
        _ui.info(f"Set docker_image_base_name = {image_base_name} in {path}.")
    _ui.ok(f"Logged in to {address} as {username} on {name}" + ("" if server_only else " and on this computer") + ".")
    _ui.output(result)
