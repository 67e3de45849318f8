"""``python -m lowbit`` is the ``lowbit`` command."""

from lowbit.cli import main

raise SystemExit(main())
