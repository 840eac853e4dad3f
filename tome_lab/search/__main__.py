"""``python -m tome_lab.search``: runs the importable :func:`tome_lab.search.cli.main`, so that
the worker jobs pickle as ``tome_lab.search.*``, never as ``__main__``."""

from __future__ import annotations

import sys

from tome_lab.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
