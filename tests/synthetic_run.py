"""Synthetic run directories with a regular, known timing pattern (a test fixture).

:func:`write_synthetic_run` writes ``run.h5`` and one rank file per rank through the same
writers a real run uses (:class:`~pcpp_mpi.output.rank_file.RankFile`,
:class:`~pcpp_mpi.output.run_file.RunFile`), without MPI or a model. The pattern, per rank
``r`` of ``n`` bands and step ``s``:

- step ``s`` starts at ``s * period_s`` (every rank) and lasts ``wall_s[r]``;
- in every step but the last, each of ``layers`` exchanges is posted at
  ``t_start + (j + 1) * post_gap_s`` (``j`` = layer index) to both neighbouring bands;
- it is waited for in step ``s + 1`` at ``t_start(s + 1) + (j + 1) * post_gap_s`` for
  ``wait_s`` seconds (so ``exposed_comm`` of every step but the first is
  ``layers * wait_s``);
- every message carries ``nbytes``; ``/traffic`` holds the matching byte counts (kind
  ``halo``).

Use ``steps_written`` below ``steps`` (and a ``running`` status) to imitate a killed job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from pcpp_mpi.output.rank_file import RankFile, rank_file_name
from pcpp_mpi.output.run_file import RunFile
from pcpp_mpi.trace.recorder import ExchangeRow, PhaseRow, StepRow


def _neighbours(band: int, n_bands: int) -> list[int]:
    return [p for p in (band - 1, band + 1) if 0 <= p < n_bands]


def synthetic_rows(
    rank: int,
    n_ranks: int,
    steps: int,
    *,
    wall_s: float,
    period_s: float,
    layers: int,
    post_gap_s: float,
    wait_s: float,
    nbytes: int,
) -> tuple[list[StepRow], list[ExchangeRow], list[tuple[int, int, str, int, int]]]:
    """Step rows, exchange rows and traffic rows of one rank (see the module docstring)."""
    peers = _neighbours(rank, n_ranks)
    step_rows, exchange_rows, traffic = [], [], []
    for step in range(steps):
        start = step * period_s
        exposed = layers * wait_s if step > 0 else 0.0
        step_rows.append(
            StepRow(0, step, "displaced" if step else "sync", start, start + wall_s, exposed)
        )
        if step == steps - 1:
            continue
        nxt = (step + 1) * period_s
        for j in range(layers):
            post = start + (j + 1) * post_gap_s
            wait_start = nxt + (j + 1) * post_gap_s
            for peer in peers:
                exchange_rows.append(
                    ExchangeRow(
                        0,
                        step,
                        f"layer{j}",
                        "halo",
                        peer,
                        nbytes,
                        nbytes,
                        post,
                        wait_start,
                        wait_start + wait_s,
                        step + 1,
                    )
                )
        if peers:
            total = layers * len(peers) * nbytes
            traffic.append((0, step, "halo", total, total))
    return step_rows, exchange_rows, traffic


def write_synthetic_run(
    directory: str | Path,
    n_ranks: int,
    steps: int,
    *,
    steps_written: int | None = None,
    walls_s: Sequence[float] | None = None,
    period_s: float = 0.12,
    layers: int = 4,
    post_gap_s: float = 0.01,
    wait_s: float = 0.002,
    nbytes: int = 4096,
    status: str = "complete",
    mode: str = "distrifusion",
    height: int = 256,
    width: int = 256,
) -> Path:
    """Write a synthetic run into ``directory`` (created); returns the run file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    walls = list(walls_s) if walls_s is not None else [0.1] * n_ranks
    written = steps if steps_written is None else steps_written
    config = {
        "generation": {"steps": steps, "height": height, "width": width, "prompts": ["synthetic"]},
        "parallel": {"mode": mode},
    }
    run = RunFile.create(
        directory / "run.h5",
        config_yaml=yaml.safe_dump(config),
        provenance={
            "mode": mode,
            "n_ranks": n_ranks,
            "bands": [[r, r + 1] for r in range(n_ranks)],
        },
        n_ranks=n_ranks,
        rank_files=[rank_file_name(r) for r in range(n_ranks)],
    )
    for rank in range(n_ranks):
        step_rows, exchange_rows, traffic = synthetic_rows(
            rank,
            n_ranks,
            steps,
            wall_s=walls[rank],
            period_s=period_s,
            layers=layers,
            post_gap_s=post_gap_s,
            wait_s=wait_s,
            nbytes=nbytes,
        )
        kept = step_rows[:written]
        writer = RankFile(
            directory / rank_file_name(rank),
            {
                "rank": rank,
                "n_ranks": n_ranks,
                "band_index": rank,
                "cfg_index": 0,
                "band_start": rank,
                "band_stop": rank + 1,
                "mode": mode,
                "host": "synthetic",
                "device": "none",
                "tracing": True,
                "epoch_unix": 1.7e9,
            },
        )
        writer.append(
            steps=kept,
            exchanges=[e for e in exchange_rows if e.waited_in_step < written],
            traffic=[t for t in traffic if t[1] < written],
            phases=[PhaseRow("denoise", 0, 0.0, (written - 1) * period_s + walls[rank])]
            if written == steps
            else [],
        )
        if status != "running":
            writer.set_attrs(status=status, peak_memory_bytes=1000 + rank)
        writer.close()
    if status in ("complete", "failed", "interrupted"):
        run.set_status(status, error=None if status == "complete" else f"synthetic {status}")
    run.close()
    return directory / "run.h5"
