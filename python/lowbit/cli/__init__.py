"""Layer 9: the ``lowbit`` command line, one subcommand per job."""
