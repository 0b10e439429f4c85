"""``python -m nnspec.cli``: the ``nnspec`` command."""
import sys

from . import main

sys.exit(main())
