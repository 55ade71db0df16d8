"""The subcommands of ``pcpp-mpi`` besides ``run``: thin argparse wiring over the library.

Each module registers its subcommands on the top-level parser with ``register(sub)`` and sets
``handler`` (``Namespace -> exit code``) on their parsers; :mod:`pcpp_mpi.cli` dispatches.

- :mod:`~pcpp_mpi.commands.plan`: ``plan`` (no MPI, no weights);
- :mod:`~pcpp_mpi.commands.info`: ``info`` (the MPI library and the ranks' devices);
- :mod:`~pcpp_mpi.commands.analysis`: ``summary``, ``timeline``, ``perfetto``, ``compare``;
- :mod:`~pcpp_mpi.commands.sweep`: ``sweep list | array | start | finish | collect``.
"""
