"""``python -m semcorr`` (and ``torchrun -m semcorr``) runs the CLI."""

import sys

from semcorr.cli.main import main

sys.exit(main())
