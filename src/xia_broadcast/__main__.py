"""``python -m xia_broadcast``: the ``xia-broadcast`` command."""

import sys

from .cli import main

sys.exit(main())
