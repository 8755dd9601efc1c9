"""``python -m segdistill ...``: the same as the ``segdistill`` console script."""

import sys

from .cli import main

sys.exit(main())
