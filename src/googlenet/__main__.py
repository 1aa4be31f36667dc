"""`python -m googlenet` (also what `torchrun -m googlenet train ...` runs)."""
import sys

from .cli import main

sys.exit(main())
