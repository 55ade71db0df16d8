"""``pcpp-mpi plan``'s entry: a job's plan for a rank count, with the layer inventory traced
from the model's configuration (torch on the meta device; no weights, no MPI).

The plan itself is pure data (:mod:`pcpp_mpi.plan`); this module only asks the model's family
(:mod:`pcpp_mpi.families`) for the model's shape and layer inventory, and
``families/vae_decoder/inventory`` for the decoder's.
"""

from __future__ import annotations

from pcpp_mpi.config import JobConfig
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.families.vae_decoder.inventory import trace_decoder
from pcpp_mpi.models import vae_config
from pcpp_mpi.plan.decode import decode_bands
from pcpp_mpi.plan.layout import plan_layout
from pcpp_mpi.plan.report import JobPlan, build_plan


def make_plan(job: JobConfig, n_ranks: int) -> JobPlan:
    """Plan ``job`` on ``n_ranks`` ranks (raises ConfigError like a real run would)."""
    family = denoiser_family(job.model)
    layout = plan_layout(job, n_ranks, family.model_shape(job.model))
    decode_bands(job.output.decode, layout)  # raises ConfigError if they cannot be split
    inventory = family.trace_inventory(job.model, layout.latent_height, layout.latent_width)
    decoder = trace_decoder(vae_config(job.model), layout.latent_height, layout.latent_width)
    return build_plan(job, layout, inventory, decoder)
