"""`python -m synpo_operator.devcluster {build,up,down,status,env}`."""

import sys

from .cli import main

sys.exit(main())
