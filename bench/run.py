"""Run the benchmark: ``python bench/run.py`` (``--quick`` for a smoke run, ``--help``)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
