"""``python -m bitstack.cli``: the ``bitstack`` command."""

import sys

from bitstack.cli import main

sys.exit(main())
