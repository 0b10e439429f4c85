"""``python -m nnspec.cli``: the ``nnspec`` command."""
import sys

from .dispatch import main

sys.exit(main())
