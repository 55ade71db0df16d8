"""The job configuration: a tree of frozen dataclasses.

Loading and validation live in :mod:`pcpp_mpi.config.loader`; this module only declares the
shape and the defaults. Nothing here touches MPI, a GPU or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# re-exported: the modes and their rules are declared once, in config/modes
from pcpp_mpi.config.modes import DISPLACED_MODES as DISPLACED_MODES
from pcpp_mpi.config.modes import MODES as MODES

ModeName = Literal["single", "naive", "sync", "distrifusion", "pcpp"]  # == config.modes.MODES
SchedulerName = Literal["auto", "ddim", "euler", "dpmsolver++", "flow-euler"]
DtypeName = Literal["float32", "float16", "bfloat16"]
DeviceName = Literal["cpu", "cuda"]
GraphsName = Literal["auto", "eager", "emulate"]
NormKernelsName = Literal["auto", "torch", "triton"]
ComputeStreamName = Literal["own", "default"]
CompileName = Literal["auto", True, False]
CompileBackendName = Literal["inductor", "aot_eager"]
ArchName = Literal["sd15", "sd21", "sdxl", "pixart-sigma", "sd3-medium"]
BuiltinName = Literal["tiny", "tiny-pixart"]
DecodeName = Literal["parallel", "rank0"]


@dataclass(frozen=True)
class ModelConfig:
    """Which model to run. Exactly one of ``builtin``, ``path`` or ``arch`` is set.

    - ``builtin: tiny``: the small model shipped with the package.
    - ``path: /models/sd15``: a local diffusers folder (``model_index.json``, ``unet/`` or a
      PixArt or SD3 ``transformer/``, ``vae/``, ``scheduler/``, tokenizer(s), text
      encoder(s)); loaded offline.
    - ``arch: sd15 | sd21 | sdxl | pixart-sigma | sd3-medium`` with ``weights: random``:
      full-size UNet (or PixArt-Sigma or SD3-medium transformer) and VAE built from
      configurations with random weights seeded by ``seed`` (for speed measurements).
    """

    builtin: BuiltinName | None = None
    path: str | None = None
    arch: ArchName | None = None
    weights: Literal["random"] | None = None
    seed: int = 0

    @property
    def source(self) -> Literal["builtin", "path", "arch"]:
        if self.builtin is not None:
            return "builtin"
        if self.path is not None:
            return "path"
        return "arch"


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate. ``height``/``width`` are in pixels; one image per prompt.

    ``scheduler``: ``ddim``, ``euler`` or ``dpmsolver++`` for noise-prediction models,
    ``flow-euler`` for flow-matching ones (SD3); ``auto`` picks ``flow-euler`` when the
    model's scheduler config is a flow-matching one and ``ddim`` otherwise.
    """

    prompts: tuple[str, ...] = ("a red circle at the top left on a blue background",)
    negative_prompts: tuple[str, ...] = ("",)
    height: int = 128
    width: int = 128
    steps: int = 20
    guidance_scale: float = 5.0
    scheduler: SchedulerName = "auto"
    seed: int = 0


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and in which precision the model runs, and what the run watches.

    ``check_finite`` stops the run with an error naming the step and rank as soon as a latent
    element becomes NaN or Inf; ``trace`` records per-step timings and every exchange in the
    rank files (byte counts are always recorded). ``graphs``: ``auto`` replays each UNet call
    as CUDA graphs on a GPU (MPI between them) and runs eagerly on the CPU; ``eager`` always runs
    eagerly; ``emulate`` (CPU, for tests) drives the MPI calls from a recorded step the way a
    graph replay does. ``latent_halo_on_host``: on a GPU, the first convolution's halo (a few
    latent rows, exchanged fresh at the start of every step) goes through pinned host memory
    even with a CUDA-aware MPI, so it does not queue behind device-to-device transfers.
    ``norm_kernels``: how GroupNorms whose statistics span bands are computed: ``auto`` (Triton
    kernels on a GPU when they compile and pass a check there, PyTorch operations otherwise),
    ``torch``, ``triton``. ``kv_frames``: when exchange buffers are on the compute device, each
    attention layer's keys and values live in two token-major frames that MPI receives into and
    sends from, so a displaced step reads its context in place (no concatenation, no copy into
    a send buffer); ``false`` keeps separate buffers (same results). ``stats_per_step``:
    displaced steps exchange every GroupNorm's statistics in one all-reduce per step instead of
    one per norm (same results). ``compute_stream``: on a GPU, ``own`` computes on a
    non-blocking CUDA stream, so a CUDA-aware MPI's copies (on blocking streams of its own) can
    run during the rank's kernels; ``default`` uses the CUDA default stream, with which those
    copies serialise (for comparison). ``compile``: ``auto`` (on a GPU), ``true`` or ``false``:
    the UNet call of a step is compiled by ``torch.compile`` (``compile_backend``: inductor,
    or ``aot_eager`` to check tracing without generating code) and still replayed as CUDA
    graphs with MPI between them; ``compile_cache``: the directory of inductor's on-disk
    caches (default ``~/.cache/pcpp-mpi/torch-compile``), which make later jobs compile fast;
    ``compile_warmup``: also compile the ``sync`` warm-up steps of the displaced modes (a
    second compiled phase: faster warm-up steps for about twice the compile time).
    ``nvtx``: on a GPU, NVTX ranges around every phase, step and exchange wait, for Nsight
    Systems timelines (no effect on the CPU).
    """

    dtype: DtypeName = "float32"
    device: DeviceName = "cpu"
    check_finite: bool = True
    trace: bool = True
    graphs: GraphsName = "auto"
    latent_halo_on_host: bool = True
    norm_kernels: NormKernelsName = "auto"
    kv_frames: bool = True
    stats_per_step: bool = True
    compute_stream: ComputeStreamName = "own"
    compile: CompileName = "auto"
    compile_backend: CompileBackendName = "inductor"
    compile_cache: str | None = None
    compile_warmup: bool = False
    nvtx: bool = False


@dataclass(frozen=True)
class ParallelConfig:
    """How the image is split across ranks.

    ``warmup_steps`` synchronous (exact) steps run first in the displaced modes;
    ``ratio`` is the share of each neighbouring band a ``pcpp`` rank attends to;
    ``cfg_parallel`` splits the ranks into an unconditional and a conditional group.
    """

    mode: ModeName = "pcpp"
    warmup_steps: int = 4
    ratio: float = 0.3
    cfg_parallel: bool = False


@dataclass(frozen=True)
class OutputConfig:
    """What a run writes besides ``run.h5`` and the rank files, and how images are decoded.

    ``decode``: ``parallel`` (every rank decodes its band of the latent with a band-parallel
    VAE decoder; only uint8 image rows travel to rank 0) or ``rank0`` (the latent is gathered
    and rank 0 decodes the whole image); one rank decodes alone either way. ``latents``: write
    each final latent to ``run.h5`` (``/latents``); with parallel decoding that costs one
    gather of the float32 latent to rank 0 per image, which ``false`` saves.
    """

    png: bool = True
    decode: DecodeName = "parallel"
    latents: bool = True


@dataclass(frozen=True)
class JobConfig:
    """A whole job, as loaded from YAML after ``--set`` overrides."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(builtin="tiny"))
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
