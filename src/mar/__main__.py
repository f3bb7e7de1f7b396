"""``python -m mar ...`` (and ``torchrun -m mar ...``): the same as ``mar ...``."""

import sys

from .cli import main

sys.exit(main())
