# `ferryd.cli` imports nothing heavy: `main` first ignores SIGHUP for `serve` (see it).
from ferryd.cli import main

raise SystemExit(main())
