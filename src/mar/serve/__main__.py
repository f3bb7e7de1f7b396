"""``python -m mar.serve ...``: the same as ``mar serve ...``."""

import sys

from .cli import main

sys.exit(main())
