"""The ``--set KEY=VALUE`` command-line option shared by ``pcpp-mpi`` and the tools."""

from __future__ import annotations

import argparse


def add_settings_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """Add a repeatable ``--set KEY=VALUE`` (into ``args.overrides``), ``example`` as
    ``section.key=value`` for the help text; the values go to
    :func:`pcpp_mpi.config.job_from_dict` or :func:`pcpp_mpi.config.load_job` as overrides."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a configuration key, e.g. {example} (repeatable)",
    )
