"""Helpers for the tests that deploy the example experiment to the testbed."""

from __future__ import annotations

import contextlib
from pathlib import Path

from labdeploy.app import apps, deploy
from labdeploy.server import stack


def prepare_local_stack(remote, testbed: dict) -> None:
    """The shared stack with the testbed's images, for local (plain HTTP) names."""
    stack.prepare(remote, stack.StackSettings.for_images(testbed["images"], domain="localhost"))


def deploy_kwargs(testbed: dict) -> dict:
    """What examples/stroop needs to build and run from the testbed's own images."""
    return {"build_args": {"BASE_IMAGE": testbed["images"]["python"]}, "redis_image": testbed["images"]["redis"],
            "health_path": "/health"}


def destroy_if_deployed(remote, app: str) -> None:
    """Remove one of the tests' own throw-away apps with its data and backups; nothing if it isn't there.
    Forced: the tests' own participants may still be 'working' (Dallinger keeps them so)."""
    try:
        apps.destroy(app, remote, confirm=True, remove_data=True, export_check=False, remove_backups=True, force=True)
    except deploy.UnknownApp:
        pass


def drop_data_only(remote, *apps_: str) -> None:
    """Remove the databases, roles and backups of test "apps" that are a database only."""
    from labdeploy.server import psql

    for name in apps_:
        ident = "app_" + name.replace("-", "_")
        psql.run_sql(remote, f"DROP DATABASE IF EXISTS {ident};\nDROP ROLE IF EXISTS {ident};\n")
        remote.run(["rm", "-rf", "--", f"dallinger-data/backups/{name}"])


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "stroop"


@contextlib.contextmanager
def example_deployed(remote, testbed: dict, app: str):
    """examples/stroop freshly deployed as `app` for a module's tests, removed after them."""
    prepare_local_stack(remote, testbed)
    destroy_if_deployed(remote, app)
    deploy.deploy(EXAMPLE, app, remote, **deploy_kwargs(testbed))
    try:
        yield remote
    finally:
        destroy_if_deployed(remote, app)
