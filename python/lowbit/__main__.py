"""``python -m lowbit`` is the ``lowbit`` command."""

from lowbit.cli.main import main

raise SystemExit(main())
