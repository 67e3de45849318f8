"""Layer 9: the ``lowbit`` command line. ``app`` holds the table of
subcommands and ``main``; each subcommand is one module here (``convert``,
``validate``, ...) with ``add_arguments`` and ``run``; ``common`` holds what
they share (exit codes, argument types, the one output helper)."""

from lowbit.cli.app import main

__all__ = ["main"]
