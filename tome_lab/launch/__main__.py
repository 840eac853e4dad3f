"""``python -m tome_lab.launch``: runs the importable :func:`tome_lab.launch.cli.main` (the
detached local launcher starts ``python -m tome_lab.launch _drive``)."""

from __future__ import annotations

import sys

from tome_lab.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
