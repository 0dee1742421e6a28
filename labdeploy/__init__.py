"""labdeploy: deploy and run online experiments on your own server over SSH, from Jupyter."""

from .errors import LabdeployError

__all__ = ["LabdeployError"]
__version__ = "0.1.0"
