"""`python -m synpo_devcluster {build,up,down,status,env}`."""

import sys

from .cli import main

sys.exit(main())
