"""``python -m cnnlab.demo conv|pool|feature_maps``: the course demos; the code is cnnlab/lessons/demo.py."""
from cnnlab.lessons.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
