"""``python -m cnnlab.compare PATH...``: the sweep report's CLI; the code is cnnlab/reporting/compare.py."""
from cnnlab.reporting.compare import cli

if __name__ == "__main__":
    cli()
