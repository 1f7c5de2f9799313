"""``python -m gateway_app.capacity``: the capacity report from saved metrics and history files;
``python -m gateway_app.capacity replay``: the what-if replay of a proposed mix."""

import sys

if sys.argv[1:2] == ["replay"]:
    from .replay import main

    sys.exit(main(sys.argv[2:]))

from .report import main

sys.exit(main())
