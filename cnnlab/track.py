"""``python -m cnnlab.track import <folders...>``: run folders into the tracker (cnnlab/tracking/imports.py)."""

from cnnlab.tracking.imports import cli

if __name__ == "__main__":
    cli()
