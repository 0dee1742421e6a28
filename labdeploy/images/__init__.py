"""The experiment's image: its name and a build on this computer (`build`), and getting it
onto the server in one of three modes (`transfer`: built there, copied over SSH, or through a
registry with its logins, `registry`)."""

import importlib as _importlib


def __getattr__(name: str):
    # `labdeploy.images` was one module before the layers: its names (build_image, image_name,
    # LinkOutsideFolder, ...) stay reachable on the package, from build.py, loaded on first use.
    if not name.startswith("__"):
        build = _importlib.import_module(f"{__name__}.build")
        if hasattr(build, name):
            return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
