"""`python -m georep` is `georep-sync`."""

from georep.cli.main import main

raise SystemExit(main())
