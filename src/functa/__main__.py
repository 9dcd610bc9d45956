"""``python -m functa`` (and ``torchrun ... -m functa fit ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
