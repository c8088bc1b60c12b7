"""``python -m clipforge ...``: the same as the ``clipforge`` command."""

import sys

from clipforge.cli.main import main

sys.exit(main())
