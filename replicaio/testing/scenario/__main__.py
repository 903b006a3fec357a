"""``python -m replicaio.testing.scenario [--rewrite] [--show] FILE...``"""

import sys

from replicaio.testing.scenario import main

sys.exit(main())
