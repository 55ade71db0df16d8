"""Offline analysis of pcpp-mpi runs: pure functions over run and rank files (no MPI, no GPU).

- :mod:`~pcpp_mpi.analysis.files`: read a run directory (also while it runs, or after a kill);
- :mod:`~pcpp_mpi.analysis.summary` and :mod:`~pcpp_mpi.analysis.report`: step, compute,
  communication, overlap, imbalance, bytes and memory figures; text, CSV and JSON;
- :mod:`~pcpp_mpi.analysis.timeline`: the per-rank timeline PNG;
- :mod:`~pcpp_mpi.analysis.perfetto`: Chrome trace-event JSON, with send -> receive flows;
- :mod:`~pcpp_mpi.analysis.images` and :mod:`~pcpp_mpi.analysis.compare`: PSNR, SSIM, max
  difference and heat maps of two runs' images.

The ``pcpp-mpi`` subcommands summary, timeline, perfetto and compare
(:mod:`pcpp_mpi.commands.analysis`) are thin wrappers.
"""

from pcpp_mpi.analysis.files import RankTrace, RunTrace, load_run
from pcpp_mpi.analysis.summary import RankSummary, RunSummary, summarize_run, with_baseline

__all__ = [
    "RankSummary",
    "RankTrace",
    "RunSummary",
    "RunTrace",
    "load_run",
    "summarize_run",
    "with_baseline",
]
