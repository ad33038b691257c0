"""``python -m cnnlab.export``: see :mod:`cnnlab.export.app`."""

import sys

from cnnlab.export.app import cli

if __name__ == "__main__":
    sys.exit(cli())
