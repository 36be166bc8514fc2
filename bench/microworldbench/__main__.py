"""`python -m microworldbench ...` runs the CLI."""

from __future__ import annotations

import sys

from microworldbench.cli import main

sys.exit(main())
