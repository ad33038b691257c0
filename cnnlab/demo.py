"""``python -m cnnlab.demo conv|pool|feature_maps``: the course demos; the code is cnnlab/lessons/demo.py."""
import sys

from cnnlab.errors import run_main
from cnnlab.lessons.demo import main

if __name__ == "__main__":
    sys.exit(run_main(main))
