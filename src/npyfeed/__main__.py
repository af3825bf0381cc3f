"""``python -m npyfeed``: the same command line as the ``npyfeed`` script."""

from npyfeed.cli import main

raise SystemExit(main())
