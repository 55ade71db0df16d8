"""The patch-parallel VAE decode as plain data: its layers, its bands and its bytes.

The decoder's inventory is traced with torch by ``families/vae_decoder/inventory``; the plan
and the run both read this description, so the bytes predicted and the bytes sent come from
one source. Rows are latent rows; a layer at ``scale`` ``s`` (1 at the latent, the VAE scale
factor at the last convolutions) sees ``s`` rows per latent row and ``latent_width * s``
columns.

Decode bands: without ``cfg_parallel`` rank ``r`` decodes the latent rows of its own band;
with it, the two ranks that own a band (one per CFG group, holding the same final latent) split
it, the first CFG group taking the upper (larger) half. Decode *positions* order the decoding
ranks from the top of the image: ``band_index * cfg_groups + cfg_index``; position 0 is world
rank 0, which assembles the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pcpp_mpi.config import ConfigError
from pcpp_mpi.geometry import Band, conv_halo, split_bands
from pcpp_mpi.plan.accounting import NORM_STAT_BYTES, NORM_STATS, Traffic
from pcpp_mpi.plan.layout import RunLayout
from pcpp_mpi.plan.topology import Topology, neighbours

#: kind of every exchange of the parallel decode (halo rows, GroupNorm sums, K/V)
DECODE_KIND = "decode"
#: kind of the uint8 image rows every decoding rank sends to rank 0
IMAGE_KIND = "image"
#: bytes of one image element (uint8)
PIXEL_BYTES = 1


@dataclass(frozen=True)
class DecoderConv:
    """A Conv2d of the decoder whose kernel spans more than one row, at ``scale``."""

    name: str
    scale: int
    in_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int


@dataclass(frozen=True)
class DecoderNorm:
    """A GroupNorm of the decoder (the attention's own included), at ``scale``."""

    name: str
    scale: int
    channels: int
    groups: int


@dataclass(frozen=True)
class DecoderAttn:
    """A self-attention layer of the decoder at ``scale``; K and V have ``inner_dim`` each."""

    name: str
    scale: int
    inner_dim: int
    heads: int


@dataclass(frozen=True)
class DecoderInventory:
    """Every spatial layer of a VAE decoder in execution order, for a latent of
    ``latent_height x latent_width``; ``scale_factor`` image rows per latent row,
    ``out_channels`` image channels; ``force_upcast``: a float16 VAE decodes in float32."""

    latent_height: int
    latent_width: int
    latent_channels: int
    out_channels: int
    scale_factor: int
    force_upcast: bool
    convs: tuple[DecoderConv, ...]
    norms: tuple[DecoderNorm, ...]
    attns: tuple[DecoderAttn, ...]

    def width_at(self, scale: int) -> int:
        return self.latent_width * scale


def decode_position(topology: Topology) -> int:
    """Where a rank's decode band sits from the top of the image."""
    return topology.band_index * topology.cfg_groups + topology.cfg_index


def position_world_rank(position: int, n_bands: int, cfg_groups: int) -> int:
    """The world rank that decodes at ``position`` (inverse of :func:`decode_position`)."""
    return (position % cfg_groups) * n_bands + position // cfg_groups


def decodes_in_parallel(decode: str, layout: RunLayout) -> bool:
    """Whether the job's images are decoded by every rank (``output.decode: parallel`` with
    more than one rank); otherwise rank 0 decodes the gathered latent."""
    return decode == "parallel" and layout.n_ranks > 1


def decode_bands(decode: str, layout: RunLayout) -> tuple[Band, ...]:
    """Latent rows each decoding rank decodes, by decode position (one band: rank 0's
    whole-image decode). Raises ConfigError if a ``cfg_parallel`` band has one latent row."""
    if not decodes_in_parallel(decode, layout):
        return (Band(0, 0, layout.latent_height),)
    if layout.cfg_groups == 1:
        return layout.bands
    bands: list[Band] = []
    for band in layout.bands:
        if band.rows < layout.cfg_groups:
            raise ConfigError(
                f"output.decode: 'parallel' with cfg_parallel splits each band between its two "
                f"ranks, but a band has {band.rows} latent row; use output.decode: rank0"
            )
        for half in split_bands(band.rows, layout.cfg_groups, 1):
            index = len(bands)
            bands.append(Band(index, band.start + half.start, band.start + half.stop))
    return tuple(bands)


def decode_itemsize(itemsize: int, force_upcast: bool) -> int:
    """Bytes per decoder activation element: a half-precision VAE with ``force_upcast``
    decodes in float32."""
    return 4 if force_upcast and itemsize == 2 else itemsize


def decode_traffic(
    inventory: DecoderInventory, bands: Sequence[Band], index: int, itemsize: int
) -> Traffic:
    """Bytes the rank at decode position ``index`` sends and receives in one parallel decode
    (batch 1, every exchange fresh), all of kind ``decode``: halo rows of every convolution at
    its scale, the sums of every GroupNorm, and the other bands' keys and values of every
    self-attention."""
    traffic = Traffic()
    n = len(bands)
    if n == 1:
        return traffic
    sent = received = 0
    band = bands[index]
    up, down = neighbours(bands, index)
    for conv in inventory.convs:
        halo = conv_halo(conv.kernel, conv.stride, conv.padding, conv.dilation)
        row_bytes = conv.in_channels * inventory.width_at(conv.scale) * itemsize
        if up is not None:
            sent += halo.below * row_bytes
            received += halo.above * row_bytes
        if down is not None:
            sent += halo.above * row_bytes
            received += halo.below * row_bytes
    for norm in inventory.norms:
        payload = NORM_STATS * norm.groups * NORM_STAT_BYTES
        sent += payload
        received += payload
    total_rows = sum(b.rows for b in bands)
    for attn in inventory.attns:
        row_bytes = inventory.width_at(attn.scale) * 2 * attn.inner_dim * itemsize
        own_rows = band.rows * attn.scale
        sent += (n - 1) * own_rows * row_bytes
        received += (total_rows - band.rows) * attn.scale * row_bytes
    traffic.sent[DECODE_KIND] = sent
    traffic.received[DECODE_KIND] = received
    return traffic


def image_rows_bytes(inventory: DecoderInventory, band: Band) -> int:
    """Bytes of the uint8 image rows decoded from latent ``band``."""
    factor = inventory.scale_factor
    return band.rows * factor * inventory.width_at(factor) * inventory.out_channels * PIXEL_BYTES


def image_traffic(inventory: DecoderInventory, bands: Sequence[Band], index: int) -> Traffic:
    """The image rows to position 0: sent by every other position, received by position 0."""
    traffic = Traffic()
    if len(bands) == 1:
        return traffic
    if index == 0:
        traffic.received[IMAGE_KIND] = sum(image_rows_bytes(inventory, b) for b in bands[1:])
    else:
        traffic.sent[IMAGE_KIND] = image_rows_bytes(inventory, bands[index])
    return traffic
