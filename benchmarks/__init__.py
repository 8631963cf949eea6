"""Benchmarks of nebula-credential beside the libraries users would pick instead.

``python -m benchmarks`` (``make bench``) runs everything in one process and
writes ``docs/benchmarks.md`` and ``docs/benchmarks.png``.  The functions
here take their sizes as arguments so the test suite can run them tiny.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("nebula_credential") is None:  # run from a clone without install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
