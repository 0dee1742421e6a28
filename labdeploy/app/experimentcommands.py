"""What an experiment folder runs: a Dallinger/PsyNet folder (experiment.py, config.txt, no
Procfile) brings its own commands, configuration and, when it has none, a generated
Dockerfile; any other folder a Dockerfile and a Procfile."""

from __future__ import annotations

from pathlib import Path

from ..errors import ValidationError
from ..experiment import dallinger, folder
from ..server import layout
from . import appcompose


def read(exp: Path, dockerfile: str) -> tuple:
    """(spec or None, commands, processes, config, secret config) of the folder `exp`."""
    if dallinger.is_experiment_folder(exp) and not (exp / "Procfile").is_file():
        # The image's Dallinger/PsyNet releases are chosen (PyPI, cached) before anything is built.
        spec = dallinger.spec(exp, dockerfile=dockerfile)
        # No clock unless clock_on.
        return spec, spec.commands, spec.services, dict(spec.env), dict(spec.secret_env)
    if dockerfile == dallinger.GENERATED:
        raise ValidationError("dockerfile='generated' is for Dallinger/PsyNet experiments (experiment.py and "
                              "config.txt, no Procfile); this folder needs its own Dockerfile.",
                              "Give the name of the folder's Dockerfile (default 'Dockerfile').",
                              code="invalid.dockerfile")
    if not (exp / folder.relative_name(dockerfile, "Dockerfile name")).is_file():
        raise folder.DockerfileMissing(f"There is no {dockerfile} in {exp}.",
                                       "Deploy the experiment's own folder (the one with its Dockerfile), or add "
                                       "a Dockerfile (see examples/stroop/Dockerfile).")
    return None, appcompose.read_procfile(exp), layout.PROCESS_SERVICES, {}, {}
