"""Allow ``python -m crosslmm_edge``."""

import sys

from crosslmm_edge.cli import main

sys.exit(main())
