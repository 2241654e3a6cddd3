"""`python -m p2l_client`: the same as the `p2l` command."""

import sys

from p2l_client.cli import main

sys.exit(main())
