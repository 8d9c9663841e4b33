"""``python -m casm_cloud.cli``: the ``casm-cloud`` command."""

import sys

from casm_cloud.cli import main

sys.exit(main())
