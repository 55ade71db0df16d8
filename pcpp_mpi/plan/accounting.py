"""Bytes each rank sends and receives: the analytic model behind ``pcpp-mpi plan``.

Pure arithmetic over the layer inventory and the band geometry; the tests compare it with the
bytes the exchanges actually count. Conventions:

- point-to-point messages count their payload once at the sender and once at the receiver;
- a GroupNorm statistics all-reduce counts its payload (3 x batch x groups float64 values) as
  sent and as received by every rank, whatever algorithm the MPI library uses;
- ``sync`` steps exchange fresh data and use it at once; ``displaced`` steps send data that the
  next step uses, so the last step of a displaced run sends only ``conv_in``'s halo, which is
  always fresh (it is a row of the step's own input);
- a rank in a one-band group (``single``, or ``cfg_parallel`` with two ranks) sends nothing for
  the patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pcpp_mpi.config.modes import AttentionPattern
from pcpp_mpi.geometry import Band, conv_halo
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.schedule import StepKind
from pcpp_mpi.plan.topology import neighbours, shared_rows

TrafficKind = Literal["halo", "kv", "norm"]
TRAFFIC_KINDS: tuple[TrafficKind, ...] = ("halo", "kv", "norm")
NORM_STAT_BYTES = 8  # float64
NORM_STATS = 3  # sum, sum of squares, count


@dataclass(frozen=True)
class Traffic:
    """Bytes sent and received by one rank in one step, by kind."""

    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_received(self) -> int:
        return sum(self.received.values())


def _add(table: dict[str, int], kind: str, amount: int) -> None:
    if amount:
        table[kind] = table.get(kind, 0) + amount


def step_traffic(
    inventory: LayerInventory,
    bands: Sequence[Band],
    band_index: int,
    *,
    kind: StepKind,
    pattern: AttentionPattern,
    ratio: float,
    batch: int,
    itemsize: int,
) -> Traffic:
    """Bytes rank ``band_index`` sends/receives for its patches in one step of ``kind``.

    ``pattern`` is the attention context of displaced steps (``full`` for distrifusion,
    ``pcpp`` for partial context); sync steps always use the full pattern.
    """
    traffic = Traffic()
    n = len(bands)
    if kind == "local" or n == 1:
        return traffic
    last = kind == "displaced_last"
    attention = "full" if kind == "sync" else pattern
    band = bands[band_index]
    up, down = neighbours(bands, band_index)

    for conv in inventory.convs:
        if last and not conv.always_fresh:
            continue
        halo = conv_halo(conv.kernel, conv.stride, conv.padding, conv.dilation)
        row_bytes = batch * conv.in_channels * inventory.width_at(conv.level) * itemsize
        # the band above needs our first `below` rows; the band below our last `above` rows
        if up is not None:
            _add(traffic.sent, "halo", halo.below * row_bytes)
            _add(traffic.received, "halo", halo.above * row_bytes)
        if down is not None:
            _add(traffic.sent, "halo", halo.above * row_bytes)
            _add(traffic.received, "halo", halo.below * row_bytes)

    if last:
        return traffic
    for norm in inventory.norms:
        payload = NORM_STATS * batch * norm.groups * NORM_STAT_BYTES
        _add(traffic.sent, "norm", payload)
        _add(traffic.received, "norm", payload)

    for attn in inventory.attns:
        row_bytes = batch * inventory.width_at(attn.level) * 2 * attn.inner_dim * itemsize
        own_rows = band.rows_at_level(attn.level)
        if attention == "full":
            _add(traffic.sent, "kv", (n - 1) * own_rows * row_bytes)
            others = sum(b.rows_at_level(attn.level) for b in bands) - own_rows
            _add(traffic.received, "kv", others * row_bytes)
        else:
            shared = shared_rows(ratio, bands, band_index, attn.level)
            for neighbour, theirs in ((up, shared.from_up), (down, shared.from_down)):
                if neighbour is None:
                    continue
                _add(traffic.sent, "kv", shared.own * row_bytes)
                _add(traffic.received, "kv", theirs * row_bytes)
    return traffic


def cfg_swap_bytes(inventory: LayerInventory, band: Band, itemsize: int = 4) -> int:
    """Bytes of one noise-prediction swap between paired CFG ranks (float32, batch 1)."""
    return inventory.latent_channels * band.rows * inventory.latent_width * itemsize


def gather_bytes(inventory: LayerInventory, band: Band, itemsize: int = 4) -> int:
    """Bytes a rank sends to rank 0 when the final float32 latent is gathered."""
    return inventory.latent_channels * band.rows * inventory.latent_width * itemsize
