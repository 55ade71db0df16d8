"""Exit codes of every ``pcpp-mpi`` subcommand."""

EXIT_OK = 0
#: ``run``: the run failed while generating; analysis commands: an input cannot be used
#: (missing, unreadable, unknown schema version, no image, size mismatch).
EXIT_FAILED = 1
#: ``run``/``plan``/``sweep``: the job was rejected before any model was loaded; every
#: command: bad command line (argparse's own code).
EXIT_REJECTED = 2
#: ``run``: interrupted by SIGTERM, SIGINT or SIGUSR1, stopped at a step boundary.
EXIT_INTERRUPTED = 3
