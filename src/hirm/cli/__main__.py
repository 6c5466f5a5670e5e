"""`python -m hirm.cli`: the `hirm` command."""

import sys

from hirm.cli import main

sys.exit(main())
