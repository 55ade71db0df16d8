"""What each ``parallel.mode`` does: the one table every other module derives its rules from.

It lives in the configuration package because the loader needs it to validate a job (which
modes are displaced, which run on one rank); the step schedule built on it is
:mod:`pcpp_mpi.plan.schedule`. Plain data: no MPI, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AttentionPattern = Literal["full", "pcpp"]


@dataclass(frozen=True)
class ModeRule:
    """The behaviour of one mode.

    ``splits``: the latent is split into bands over several ranks (``single`` runs on one);
    ``communicates``: the bands exchange halos, statistics and K/V (``naive`` does not);
    ``displaced``: after the warm-up, a step uses what the previous step sent;
    ``attention``: the K/V context of displaced steps (``pcpp``: a share of each neighbour's
    rows; ``full``: every band's rows). Synchronous steps always use the full context.
    """

    name: str
    splits: bool
    communicates: bool
    displaced: bool
    attention: AttentionPattern


MODE_RULES: tuple[ModeRule, ...] = (
    ModeRule("single", splits=False, communicates=False, displaced=False, attention="full"),
    ModeRule("naive", splits=True, communicates=False, displaced=False, attention="full"),
    ModeRule("sync", splits=True, communicates=True, displaced=False, attention="full"),
    ModeRule("distrifusion", splits=True, communicates=True, displaced=True, attention="full"),
    ModeRule("pcpp", splits=True, communicates=True, displaced=True, attention="pcpp"),
)

MODES: tuple[str, ...] = tuple(rule.name for rule in MODE_RULES)
DISPLACED_MODES: tuple[str, ...] = tuple(rule.name for rule in MODE_RULES if rule.displaced)
SPLIT_MODES: tuple[str, ...] = tuple(rule.name for rule in MODE_RULES if rule.splits)
ONE_RANK_MODE: str = next(rule.name for rule in MODE_RULES if not rule.splits)


def mode_rule(mode: str) -> ModeRule:
    """The rule of ``mode``; KeyError for a name that is no mode."""
    for rule in MODE_RULES:
        if rule.name == mode:
            return rule
    raise KeyError(f"no parallel mode {mode!r}; modes: {', '.join(MODES)}")
