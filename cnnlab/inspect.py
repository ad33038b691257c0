"""``python -m cnnlab.inspect [overrides]``: the layer-shape inspector; the code is cnnlab/lessons/inspect.py."""
import sys

from cnnlab.errors import run_main
from cnnlab.lessons.inspect import main

if __name__ == "__main__":
    sys.exit(run_main(main))
