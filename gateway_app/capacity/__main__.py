"""``python -m gateway_app.capacity``: the capacity report from saved metrics and history files."""

import sys

from .report import main

sys.exit(main())
