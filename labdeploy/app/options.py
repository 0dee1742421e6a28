"""How to deploy, as one value the API, the command line and the panel share.

`DeployOptions.check()` refuses every bad input before anything connects to a server, so each
front end can call it first (the CLI does, before it opens the connection).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

from .. import names
from ..errors import ValidationError
from ..experiment import folder
from ..server import database
from . import appdata, configuration, limits, swarmstack

TRANSFER_MODES = ("server-build", "ssh-copy", "registry")
CAPACITY = ("warn", "refuse", "ignore")


@dataclass(frozen=True)
class DeployOptions:
    """Everything a deploy or update can be told; the defaults are what a researcher needs.

    mode: how the image reaches the server (server-build, ssh-copy, registry).
    config / secrets: the app's environment; keys whose names say secret go to the 0600
      secrets file whatever the source. unset_secrets: secrets to remove (they otherwise stay).
    domain: instead of the server's. redis_image / pgbouncer_image / build_args["BASE_IMAGE"]:
      remembered per app when left out (then the server's, then labdeploy's default).
    pooler: the app's own PgBouncer (None: as before; a new Dallinger/PsyNet app gets one).
    existing_data: "reuse" or "replace" the data a destroyed app of this name left.
    working_query: how a non-Dallinger app counts its working participants (one SELECT
      returning one integer), kept with the app; None keeps the last one, "" clears it.
    archive: a new app's data to start from (an export zip, labdeploy's or Dallinger's, or a
      pulled backup .dump), loaded after the app starts and before it is launched.
    credentials / logout_after_pull: a registry login of this deploy's own (mode registry).
    engine: "compose" (one server) or "swarm" (a stack on the Swarm whose manager the server is;
      needs mode "registry"; memory_limit / cpu_limit then bound each replica).
    memory_limit / cpu_limit: the app's share of the server ("4g", 1.5; labdeploy.app.limits),
      remembered per app when left out (first default: 5 GB and the CPUs that go with it).
    """

    mode: str = "server-build"
    build_args: Optional[Mapping[str, str]] = None
    base_name: Optional[str] = None
    domain: Optional[str] = None
    config: Optional[Mapping[str, str]] = None
    secrets: Optional[Mapping[str, str]] = field(default=None, repr=False)
    unset_secrets: Sequence[str] = ()
    connection_limit: int = database.DEFAULT_CONNECTION_LIMIT
    redis_image: Optional[str] = None
    pooler: Optional[bool] = None
    pgbouncer_image: Optional[str] = None
    capacity: str = "warn"
    health_path: str = "/"
    launch: Optional[bool] = None  # POST /launch after starting; None: for a deploy, not an update
    launch_attempts: int = 4
    start_timeout: float = 120
    credentials: object = field(default=None, repr=False)
    logout_after_pull: bool = False
    dockerfile: str = "Dockerfile"
    existing_data: Optional[str] = None
    archive: Optional[object] = None  # a path: an export zip or a pulled dump, loaded before launch
    working_query: Optional[str] = None
    wait_idle: bool = False  # an update waits until no participant is working (at most idle_timeout s)
    idle_timeout: float = 600
    memory_limit: Optional[object] = None  # bytes or "4g"; None: the app's last, else 5 GB
    cpu_limit: Optional[float] = None  # CPUs; None: the app's last, else its share of the server's
    engine: str = "compose"  # "swarm": a stack on the Docker Swarm the server manages (labdeploy.app.swarm)

    @classmethod
    def of(cls, options: Optional["DeployOptions"] = None, **settings) -> "DeployOptions":
        """`options` with `settings` applied (keyword arguments as deploy() takes them)."""
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"deploy() got unexpected keyword arguments: {', '.join(unknown)}")
        return replace(options or cls(), **settings)

    def check(self) -> "DeployOptions":
        """Refuse what can't be used (ValidationError), before anything reaches a server."""
        swarmstack.engine(self.engine)
        if self.engine == "swarm" and self.mode != "registry":
            raise ValidationError(f"engine='swarm' needs mode='registry', not {self.mode!r}: every node of a Swarm "
                                  "pulls the image from the registry.", "Choose the registry transfer mode.",
                                  code="invalid.engine.mode")
        if self.mode not in TRANSFER_MODES:
            raise ValidationError(f"mode={self.mode!r} is not one of {', '.join(TRANSFER_MODES)}.",
                                  "Use 'server-build' (default), 'ssh-copy' or 'registry'.", code="invalid.mode")
        if self.capacity not in CAPACITY:
            raise ValidationError(f"capacity={self.capacity!r} is not one of {', '.join(CAPACITY)}.",
                                  "Use 'warn' (default).", code="invalid.capacity")
        if not isinstance(self.health_path, str) or not self.health_path.startswith("/") \
                or any(c.isspace() for c in self.health_path):
            raise ValidationError(f"The health path {self.health_path!r} must start with '/' and have no spaces.",
                                  "Use e.g. '/' or '/health'.", code="invalid.health_path")
        database.connection_limit(self.connection_limit)
        if self.memory_limit is not None:
            limits.memory(self.memory_limit)
        if self.cpu_limit is not None:
            limits.cpus(self.cpu_limit)
        limits.workers(self.config)  # Dallinger's num_dynos_worker, when given here
        folder.check_build_args(self.build_args)
        if self.base_name is not None:
            names.image_repository(self.base_name)
        configuration.split_config(self.config, self.secrets)
        configuration.check_unset(self.unset_secrets)
        appdata.check_existing_data(self.existing_data)
        if self.archive is not None:
            from ..data.restore import local_source

            local_source(self.archive)
        if self.domain is not None:
            names.domain(self.domain)
        if self.working_query is not None and not (isinstance(self.working_query, str)
                                                   and not self.working_query.strip()):  # "" clears it
            from ..watch.participants import check_query

            check_query(self.working_query)
        for image, what in ((self.redis_image, "Redis image"), (self.pgbouncer_image, "PgBouncer image")):
            if image is not None:
                names.image(image, what)
        if self.pooler not in (None, True, False):
            raise ValidationError(f"pooler={self.pooler!r} is not True, False or None.",
                                  "Use True (through PgBouncer), False (straight to PostgreSQL) or None (as before).",
                                  code="invalid.pooler")
        if self.logout_after_pull and self.credentials is None:
            raise ValidationError("logout_after_pull needs credentials: without a login of this deploy's own "
                                  "there is nothing to log out of.",
                                  "Give this deploy's own registry login, or don't ask for the logout after the pull.",
                                  code="invalid.logout_after_pull")
        if self.wait_idle not in (True, False) or not float(self.idle_timeout) > 0:
            raise ValidationError(f"wait_idle={self.wait_idle!r}, idle_timeout={self.idle_timeout!r}: wait_idle is "
                                  "True or False and idle_timeout a number of seconds above 0.",
                                  "Turn the wait on or off, and give its longest time in seconds (above 0).", code="invalid.wait_idle")
        if int(self.launch_attempts) < 1 or float(self.start_timeout) <= 0:
            raise ValidationError("launch_attempts must be at least 1 and start_timeout above 0.",
                                  "Leave them out for the defaults (4 attempts, 120 s).", code="invalid.timing")
        return self
