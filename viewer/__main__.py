"""``python -m viewer --maps ENDPOINT --detail ENDPOINT``: the live viewer."""

import sys

from viewer.app import main

sys.exit(main())
