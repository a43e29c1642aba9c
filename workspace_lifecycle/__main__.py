"""``python -m workspace_lifecycle``: the same command line as ``workspace-lifecycle``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
