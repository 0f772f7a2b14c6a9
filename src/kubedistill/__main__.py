from kubedistill.cli import main

raise SystemExit(main())
