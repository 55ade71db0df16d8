"""What the ``tools/`` commands share: exit codes and turning read errors into messages."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pcpp_mpi.analysis.images import ImageMismatch
from pcpp_mpi.output.errors import OutputError, SchemaError

EXIT_OK = 0
EXIT_INPUT = 1  # an input cannot be used: missing, unreadable, unknown schema, size mismatch
EXIT_USAGE = 2  # bad command line (argparse's own code)


def run_tool(name: str, body: Callable[[], int]) -> int:
    """Run ``body``; a file or input problem becomes one ``NAME: error: ...`` line, exit 1."""
    try:
        return body()
    except SchemaError as exc:
        print(f"{name}: error: unsupported file: {exc}", file=sys.stderr)
    except (OutputError, ImageMismatch, ValueError, OSError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
    return EXIT_INPUT
