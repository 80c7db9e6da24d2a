from ferryd.cli import main

raise SystemExit(main())
