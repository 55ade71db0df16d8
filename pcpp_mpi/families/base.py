"""What a model family provides, so that ``plan``, the engine and CUDA graphs run it
band-parallel without knowing which network it is.

A family is a stateless object (one per kind of network: the UNet, a VAE decoder, a diffusion
transformer) living in its own folder ``families/<name>/``. It answers three questions:

- **for the plan** (torch on the meta device, no weights, no MPI): the model's shape
  (:class:`~pcpp_mpi.plan.layout.ModelShape`) and its layer inventory
  (:class:`~pcpp_mpi.plan.inventory.LayerInventory`) at a latent size;
- **for a run**: which module of a loaded model it parallelises, the same inventory traced from
  that module, and how to make it band-parallel on one rank (a
  :class:`~pcpp_mpi.parallel.apply.ParallelHandle` whose ``remove()`` restores it); the generic
  layers of ``parallel/`` (halo convolutions, band GroupNorms, band attention) do the work;
- **for CUDA graphs** (``engine/graphs``): its call signature, as a :class:`StepInputs` class
  (static copies a captured graph reads) and :meth:`ModelFamily.call`.

A family that denoises (the engine's loop steps it) is a :class:`DenoiserFamily`: it also turns
prompts into conditioning and a step's latent band and timestep into its inputs.

Shapes: "local" is this rank's band of rows, "global" the whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pcpp_mpi.config.schema import ModelConfig
    from pcpp_mpi.geometry import Band
    from pcpp_mpi.models.bundle import ModelBundle
    from pcpp_mpi.parallel.apply import BandOptions, ParallelHandle
    from pcpp_mpi.parallel.band_comm import BandComm
    from pcpp_mpi.parallel.clock import StepClock
    from pcpp_mpi.plan.inventory import LayerInventory
    from pcpp_mpi.plan.layout import ModelShape


class StepInputs(Protocol):
    """One call's inputs on this rank (tensors local: the band's rows of the latent).

    CUDA graphs keep one static copy (:meth:`clone`, made once) that every captured graph
    reads; each later step copies its inputs into it (:meth:`copy_into`), never reallocating.
    """

    def copy_into(self, static: Self) -> None:
        """Copy every tensor into ``static``'s (same shapes, dtypes and devices)."""
        ...

    def clone(self) -> Self:
        """A copy with tensors of its own (the static inputs of the graphs)."""
        ...


InputsT = TypeVar("InputsT", bound=StepInputs)
ConditioningT = TypeVar("ConditioningT")


class ModelFamily(Protocol[InputsT]):
    """What a family provides; see the module docstring. ``InputsT``: its :class:`StepInputs`."""

    #: the family's name (its folder under ``families/``), e.g. ``"unet"``
    name: str

    # -- the plan: from the configuration, no weights, no MPI ------------------------------
    def model_shape(self, model: ModelConfig) -> ModelShape:
        """Levels, latent channels and VAE scale of ``model`` (for ``plan_layout``)."""
        ...

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        """The spatial layers of ``model``'s network at a global latent size (meta device)."""
        ...

    # -- a run: a loaded model on one rank -----------------------------------------------------
    def network(self, bundle: ModelBundle) -> nn.Module:
        """The module of a loaded model this family parallelises (``bundle.denoiser``)."""
        ...

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        """The same inventory as :meth:`trace_inventory`, for a built ``network``."""
        ...

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: BandOptions,
    ) -> ParallelHandle:
        """Make ``network`` band-parallel for band ``comm.topology.band_index`` of ``bands``
        (in place; undone by the handle's ``remove()``); ``clock`` tells the layers each
        step's kind."""
        ...

    # -- CUDA graphs: the call signature ---------------------------------------------------
    def call(self, network: Callable[..., Any], inputs: InputsT) -> torch.Tensor:
        """Call ``network`` (the module, or it compiled) on ``inputs``; its output tensor
        (local, e.g. ``(B, C, rows, W)``)."""
        ...


class DenoiserFamily(ModelFamily[InputsT], Protocol[InputsT, ConditioningT]):
    """A family whose network the engine's denoising loop steps (the UNet, a transformer).

    ``ConditioningT``: what the prompts become once per image (e.g. text embeddings).
    """

    def conditioning(
        self,
        bundle: ModelBundle,
        prompts: Sequence[str],
        height: int,
        width: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> ConditioningT:
        """The conditioning of a batch of prompts (one per model batch entry) for images of
        ``height x width`` pixels, on ``device`` in ``dtype`` where the network reads it."""
        ...

    def step_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: ConditioningT
    ) -> InputsT:
        """One step's inputs: ``sample`` ``(B, C, rows, W)`` local, ``timestep`` 0-d on the
        device."""
        ...
