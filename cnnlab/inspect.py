"""``python -m cnnlab.inspect [overrides]``: the layer-shape inspector; the code is cnnlab/lessons/inspect.py."""
from cnnlab.lessons.inspect import main

if __name__ == "__main__":
    raise SystemExit(main())
