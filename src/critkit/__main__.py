"""`python -m critkit ...` (also what `accelerate launch -m critkit train CONFIG` runs)."""

import sys

from .cli import main

sys.exit(main())
