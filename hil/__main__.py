"""`python -m hil ...` is `hil ...` (tools/gpu-run uses it where no virtualenv exists)."""

import sys

from hil.cli import main

sys.exit(main())
