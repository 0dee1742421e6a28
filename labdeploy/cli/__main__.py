"""`python -m labdeploy.cli ...`: the `labdeploy` command without its console script."""

import sys

from . import main

if __name__ == "__main__":  # importing this module (as the tests do with every module) runs nothing
    sys.exit(main())
