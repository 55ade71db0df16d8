"""The step schedule: what each denoising step of a mode does with the other bands.

Built on the mode table of :mod:`pcpp_mpi.config.modes`; read by the step clock of the
parallel layers (:mod:`pcpp_mpi.parallel.clock`), by the layer installation
(:mod:`pcpp_mpi.parallel.apply`) and by the byte model (:mod:`pcpp_mpi.plan.accounting`).
"""

from __future__ import annotations

from typing import Literal

from pcpp_mpi.config.modes import ONE_RANK_MODE, AttentionPattern, mode_rule

StepKind = Literal["local", "sync", "displaced", "displaced_last"]
StepPhase = Literal["local", "fresh", "stale"]


def step_kind(step: int, steps: int, mode: str, warmup_steps: int) -> StepKind:
    """What step ``step`` of ``steps`` does with its neighbours in ``mode``.

    ``local``: nothing (the mode does not communicate); ``sync``: fresh data, used at once
    (every step of ``sync``, the warm-up of the displaced modes); ``displaced``: the previous
    step's data, this step's posted for the next; ``displaced_last``: as displaced, posting
    nothing (no step follows).
    """
    rule = mode_rule(mode)
    if not rule.communicates:
        return "local"
    if not rule.displaced or step < warmup_steps:
        return "sync"
    return "displaced_last" if step == steps - 1 else "displaced"


def phase_of(kind: StepKind) -> StepPhase:
    """What a step of ``kind`` computes: its band alone (``local``), with fresh data of the
    other bands (``fresh``: ``sync``) or with the previous step's (``stale``: displaced)."""
    if kind == "sync":
        return "fresh"
    if kind in ("displaced", "displaced_last"):
        return "stale"
    return "local"


def communicates(mode: str) -> bool:
    """Whether the bands of ``mode`` exchange anything (``naive`` and ``single`` do not)."""
    return mode_rule(mode).communicates


def attention_pattern(mode: str) -> AttentionPattern:
    """The K/V context of ``mode``'s displaced steps: ``pcpp`` (shared neighbour rows) or
    ``full`` (every band's rows)."""
    return mode_rule(mode).attention


def effective_mode(mode: str, n_bands: int) -> str:
    """The mode a run executes: the one-rank mode (``single``) when there is one band,
    ``mode`` otherwise."""
    return ONE_RANK_MODE if n_bands == 1 else mode


def runs_split(mode: str, n_bands: int) -> bool:
    """Whether a run of ``mode`` over ``n_bands`` bands installs band-parallel layers."""
    return n_bands > 1 and mode_rule(mode).splits
