from auditkit.cli import main

raise SystemExit(main())
