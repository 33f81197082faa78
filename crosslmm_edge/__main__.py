"""Allow ``python -m crosslmm_edge``."""

import sys

from .cli import main

sys.exit(main())
