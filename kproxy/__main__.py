"""`python -m kproxy`: the same as the `kproxy` command."""

import sys

from kproxy.cli import main

sys.exit(main())
