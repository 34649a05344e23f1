"""`python -m processor ...` is the `warren` command."""

import sys

from processor.cli import main

sys.exit(main())
