"""A whole job on one rank: checks, model, parallel layers, images, outputs.

Errors found before the denoising starts (configuration, geometry, run directory, model) are
agreed on by all ranks, so every rank exits with the same message and nothing hangs. An error
during denoising aborts the whole MPI job (other ranks may be blocked in MPI calls).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pcpp_mpi.comm.context import RankComm
from pcpp_mpi.comm.failure import FailureChannel
from pcpp_mpi.comm.mpi_info import WorldInfo, cuda_aware, describe_world
from pcpp_mpi.config import JobConfig, job_to_yaml
from pcpp_mpi.engine.compile import compile_enabled
from pcpp_mpi.engine.decode import ImageDecoder
from pcpp_mpi.engine.denoise import BandContext, denoise_band
from pcpp_mpi.engine.finite import FiniteWatch
from pcpp_mpi.engine.gpu_timer import GpuStepTimer
from pcpp_mpi.engine.nvtx import nvtx_ranges
from pcpp_mpi.engine.schedulers import check_schedule, check_scheduler, resolve_scheduler
from pcpp_mpi.engine.setup import DTYPES, prepare_band_context
from pcpp_mpi.engine.stopping import NonFiniteLatent, RunInterrupted, StopSignals
from pcpp_mpi.engine.streams import compute_stream
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.models import (
    ModelBundle,
    builtin_weights_provenance,
    check_model_folder,
    load_model,
    scheduler_config,
    vae_config,
)
from pcpp_mpi.output import RunFile, prepare_run_dir, write_png
from pcpp_mpi.output.provenance import collect_package_versions, git_revision
from pcpp_mpi.output.rank_file import RankFile, rank_file_name
from pcpp_mpi.output.run_lock import RunLock
from pcpp_mpi.output.space import check_free_space
from pcpp_mpi.parallel.band_norm import resolve_norm_kernels
from pcpp_mpi.plan.decode import decode_bands
from pcpp_mpi.plan.layout import RunLayout, plan_layout

log = logging.getLogger("pcpp_mpi")


class JobError(RuntimeError):
    """A problem every rank agreed on before denoising; its message is for the user."""


#: ``hook(image, step)``: called on every rank after each denoising step of each image, once the
#: step is recorded in the rank file and before the ranks agree on stop signals; an exception it
#: raises fails the run like any other error on that rank (the whole job ends, ``failed``).
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class RunResult:
    run_file: Path
    layout: RunLayout


def agree(comm: RankComm, error: str | None) -> None:
    """Raise JobError on every rank if any rank reports an error (the lowest rank's wins)."""
    errors = comm.allgather(error)
    for rank, message in enumerate(errors):
        if message is not None:
            same = all(e == message for e in errors)
            raise JobError(message if same else f"[rank {rank}] {message}")


def _attempt(action: Callable[[], object]) -> tuple[object, str | None]:
    try:
        return action(), None
    except (ValueError, RuntimeError, OSError) as exc:
        return None, str(exc)


def _check_job(job: JobConfig, n_ranks: int) -> RunLayout:
    """Everything that can be checked without weights: model folder, geometry, rank count."""
    if job.model.path is not None:
        check_model_folder(job.model.path)
    generation = job.generation
    schedule = scheduler_config(job.model)
    check_scheduler(generation.scheduler, schedule, trained=job.model.source == "path")
    check_schedule(generation.scheduler, schedule, generation.steps)
    shape = denoiser_family(job.model).model_shape(job.model)
    vae_channels = int(vae_config(job.model)["latent_channels"])
    if vae_channels != shape.latent_channels:
        raise ValueError(
            f"model: the {shape.network} steps latents of {shape.latent_channels} channels, "
            f"but the VAE decodes {vae_channels} (latent_channels of its config)"
        )
    layout = plan_layout(job, n_ranks, shape)
    decode_bands(job.output.decode, layout)  # raises if the bands cannot be decoded in parallel
    return layout


def _prepare_output(out_dir: str | Path, overwrite: bool, break_lock: bool) -> RunLock:
    """Rank 0: the run directory, locked for this job and cleared; released on any error."""
    lock = prepare_run_dir(out_dir, overwrite, break_lock=break_lock)
    try:
        check_free_space(lock.run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def compute_device(job: JobConfig, comm: RankComm) -> torch.device:
    if job.runtime.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device: 'cuda' requested but torch sees no CUDA device")
    return torch.device("cuda", comm.local_rank() % torch.cuda.device_count())


@dataclass(frozen=True)
class _AgreedStart:
    """What every rank agreed on before loading anything heavy."""

    config_yaml: str
    layout: RunLayout
    run_dir: Path
    device: torch.device
    norm_kernels: str
    lock: RunLock | None  # rank 0: this job's lock on run_dir; None on the other ranks


def run_job(
    job: JobConfig,
    comm: RankComm,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    signals: StopSignals | None = None,
    bundle: ModelBundle | None = None,
    break_lock: bool = False,
    after_step: Sequence[StepHook] = (),
) -> RunResult:
    """Run ``job`` on this rank; every rank of ``comm.world`` calls it together.

    ``bundle``: a model already loaded for ``job.model`` (in the job's dtype, on this rank's
    device), for programs that run many jobs on one model (benchmarks); loaded here otherwise.

    ``signals``: stop-signal handlers the caller installed early (so a signal during start-up
    stops the run at its first step boundary); without them they are installed for the
    denoising only.

    ``break_lock``: take over the run directory's lock from a job on another host (see
    :mod:`pcpp_mpi.output.run_lock`); rank 0 holds the lock until this returns or raises.

    ``after_step``: :data:`StepHook` callables, called in order after every step (e.g. a
    caller's progress report, or a test's injected fault).
    """
    start = _agree_on_start(job, comm, out_dir, overwrite, break_lock)
    try:
        return _run_started(job, comm, start, progress, signals, bundle, after_step)
    finally:
        if start.lock is not None:
            start.lock.release()


def _run_started(
    job: JobConfig,
    comm: RankComm,
    start: _AgreedStart,
    progress: bool,
    signals: StopSignals | None,
    bundle: ModelBundle | None,
    after_step: Sequence[StepHook],
) -> RunResult:
    """Everything after the agreed start: model, parallel layers, files, images."""
    _log_start(job, comm, start)
    comm.barrier()
    with compute_stream(start.device, job.runtime.compute_stream):
        tracer = comm.tracer
        tracer.enabled = job.runtime.trace
        tracer.ranges = nvtx_ranges(job.runtime.nvtx, start.device)
        tracer.reset_epoch()
        epoch_unix = time.time()
        if bundle is None:
            with tracer.phase("model_load"):
                dtype = DTYPES[job.runtime.dtype]
                bundle, error = _attempt(lambda: load_model(job.model, dtype, start.device))
            agree(comm, error)
        assert bundle is not None
        with tracer.phase("setup"):
            world_info = describe_world(comm.world)
            ctx = prepare_band_context(
                job, comm, bundle, start.device, start.layout, start.norm_kernels
            )
            decoder = ImageDecoder.create(job, comm, bundle, start.layout)
        rank_file = _create_rank_file(ctx, start, epoch_unix)
        run_file = _create_run_file(ctx, start, world_info)
        try:
            _generate_and_record(
                ctx, decoder, start, rank_file, run_file, progress, signals, after_step
            )
        finally:
            decoder.close()
        return RunResult(start.run_dir / "run.h5", start.layout)


def _agree_on_start(
    job: JobConfig, comm: RankComm, out_dir: str | Path, overwrite: bool, break_lock: bool
) -> _AgreedStart:
    """The checks every rank makes before the model is loaded, each agreed on by all ranks
    (the same :class:`JobError` everywhere): one configuration, a valid layout, the run
    directory (locked and prepared by rank 0), the device and the GroupNorm kernels.
    Rank 0 releases the lock again when a later check fails."""
    rank = comm.world.Get_rank()
    config_yaml = job_to_yaml(job)
    digests = comm.allgather(config_yaml)
    if any(d != digests[0] for d in digests):
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise JobError(
            f"ranks {differing} loaded a different job configuration than rank 0; every rank "
            "must be given the same job file and --set options"
        )
    layout, error = _attempt(lambda: _check_job(job, comm.world.Get_size()))
    agree(comm, error)
    assert isinstance(layout, RunLayout)

    lock = None
    error = None
    if rank == 0:
        lock, error = _attempt(lambda: _prepare_output(out_dir, overwrite, break_lock))
    agree(comm, error)
    assert lock is None or isinstance(lock, RunLock)
    run_dir = Path(comm.bcast(str(lock.run_dir) if lock is not None else None))
    try:
        device, norm_kernels = _agree_on_device(job, comm)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return _AgreedStart(config_yaml, layout, run_dir, device, norm_kernels, lock)


def _agree_on_device(job: JobConfig, comm: RankComm) -> tuple[torch.device, str]:
    """This rank's compute device and the resolved GroupNorm kernels, agreed on by all."""
    device, error = _attempt(lambda: compute_device(job, comm))
    agree(comm, error)
    assert isinstance(device, torch.device)
    # before the model is loaded: an explicit 'triton' that cannot be used stops here
    norm_kernels, error = "torch", None  # compiled: inductor generates the norms
    if not compile_enabled(job.runtime, device):
        norm_kernels, error = _attempt(
            lambda: resolve_norm_kernels(job.runtime.norm_kernels, device)
        )
    agree(comm, error)
    assert norm_kernels in ("torch", "triton")
    return device, str(norm_kernels)


def _log_start(job: JobConfig, comm: RankComm, start: _AgreedStart) -> None:
    layout = start.layout
    rank = comm.world.Get_rank()
    if layout.mode != job.parallel.mode and rank == 0:
        log.info("one band: running as 'single' (the job asks for %r)", job.parallel.mode)
    log.info(
        "%d rank(s): %d band(s) x %d CFG group(s), mode %s, latent %dx%d, bands %s",
        comm.world.Get_size(),
        layout.n_bands,
        layout.cfg_groups,
        layout.mode,
        layout.latent_height,
        layout.latent_width,
        [b.rows for b in layout.bands],
    )
    if rank == 0:
        log.info(
            "GroupNorm: %s kernels; compute stream: %s; compiled: %s",
            start.norm_kernels,
            job.runtime.compute_stream,
            job.runtime.compile_backend if compile_enabled(job.runtime, start.device) else "no",
        )


def _create_rank_file(ctx: BandContext, start: _AgreedStart, epoch_unix: float) -> RankFile:
    """This rank's file, with the attributes that describe its band."""
    comm = ctx.comm
    rank = comm.world.Get_rank()
    return RankFile(
        start.run_dir / rank_file_name(rank),
        {
            "rank": rank,
            "n_ranks": comm.world.Get_size(),
            "band_index": comm.topology.band_index,
            "cfg_index": comm.topology.cfg_index,
            "band_start": ctx.band.start,
            "band_stop": ctx.band.stop,
            "mode": start.layout.mode,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": _device_name(start.device),
            "tracing": ctx.job.runtime.trace,
            "epoch_unix": epoch_unix,
        },
    )


def _create_run_file(
    ctx: BandContext, start: _AgreedStart, world_info: WorldInfo
) -> RunFile | None:
    """Rank 0: the run file with the configuration and the provenance; None elsewhere."""
    comm = ctx.comm
    n_ranks = comm.world.Get_size()
    if comm.world.Get_rank() != 0:
        return None
    provenance = {
        "mpi": world_info.to_provenance(),
        "cuda_aware": cuda_aware(),
        "n_ranks": n_ranks,
        "mode": start.layout.mode,
        "bands": [[b.start, b.stop] for b in start.layout.bands],
        "norm_kernels": start.norm_kernels,
        "model_family": ctx.family.name,
        "model_weights": builtin_weights_provenance(ctx.job.model) or "not built-in",
        "scheduler": resolve_scheduler(ctx.job.generation.scheduler, ctx.bundle.scheduler_config),
        "packages": collect_package_versions(),
        "git_revision": git_revision() or "unknown",
    }
    return RunFile.create(
        start.run_dir / "run.h5",
        config_yaml=start.config_yaml,
        provenance=provenance,
        n_ranks=n_ranks,
        rank_files=[rank_file_name(r) for r in range(n_ranks)],
    )


def _generate_and_record(
    ctx: BandContext,
    decoder: ImageDecoder,
    start: _AgreedStart,
    rank_file: RankFile,
    run_file: RunFile | None,
    progress: bool,
    signals: StopSignals | None,
    after_step: Sequence[StepHook],
) -> None:
    """Every image, then the final status in the files: ``complete``, ``interrupted`` (every
    rank stopped at the same step boundary) or ``failed`` (the whole job is ended)."""
    comm = ctx.comm
    device = start.device
    recorder = _FailureRecorder(run_file, start.lock)
    channel = FailureChannel(comm.world, recorder.record, _thread_preparation(device))
    try:
        with contextlib.nullcontext(signals) if signals else StopSignals() as active:
            _generate_all(
                ctx, decoder, run_file, rank_file, start.run_dir, progress, active, after_step
            )
        rank_file.append(phases=comm.tracer.take_finished()[2])
        rank_file.set_attrs(
            status="complete",
            peak_memory_bytes=_peak_memory(device),
            graphs=ctx.graphs.backend,
            graph_captures=ctx.graphs.captures,
            graph_replays=ctx.graphs.replays,
            compiled_phases=",".join(sorted(ctx.graphs.compile_times)),
            compile_seconds=sum(ctx.graphs.compile_times.values()),
        )
        if run_file is not None:
            run_file.set_status("complete")
    except RunInterrupted as exc:
        ctx.handle.drain()  # the step's displaced sends and receives were posted, never waited
        _finish_rank_file(rank_file, comm, "interrupted", str(exc), device)
        if run_file is not None:
            run_file.set_status("interrupted", error=str(exc))
        log.warning("run interrupted: %s; finished steps are in %s", exc, start.run_dir)
        # every rank agreed to stop here: none may exit (which makes the launcher kill the
        # others) before rank 0 has recorded the interruption in the run file
        comm.barrier()
        raise
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        _finish_rank_file(rank_file, comm, "failed", message, device)
        _fail(comm, channel, recorder, message)
        raise
    finally:
        channel.close()
        rank_file.close()
        if run_file is not None:
            run_file.close()
        ctx.handle.remove()


def _thread_preparation(device: torch.device) -> Callable[[], None] | None:
    """What a helper thread that calls MPI must do first: on a GPU, make the rank's CUDA
    context current (a CUDA-aware MPI may call the CUDA driver from any thread that drives
    its progress; see :mod:`pcpp_mpi.comm.failure`)."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.set_device(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _finish_rank_file(
    rank_file: RankFile, comm: RankComm, status: str, error: str, device: torch.device
) -> None:
    """Keep whatever finished before the stop (a step cut short is left out); never mask the
    original problem."""
    with contextlib.suppress(Exception):
        steps, exchanges, phases = comm.tracer.take_finished()
        rank_file.append(
            steps=steps, exchanges=exchanges, phases=phases, traffic=comm.counter.drain()
        )
    with contextlib.suppress(Exception):
        rank_file.set_attrs(status=status, error=error, peak_memory_bytes=_peak_memory(device))


class _StepHooks:
    """Per step: trace (host times, and GPU times with ``gpu_timer``), flush the rank file,
    progress bar, finiteness check, the caller's ``after_step`` hooks, stop check."""

    def __init__(
        self,
        ctx,
        rank_file,
        bar,
        signals,
        image: int,
        gpu_timer: GpuStepTimer | None,
        after_step: Sequence[StepHook],
    ) -> None:
        self.ctx = ctx
        self.rank_file = rank_file
        self.bar = bar
        self.signals = signals
        self.image = image
        self.gpu_timer = gpu_timer
        self.after_step = tuple(after_step)
        self.finite = (
            FiniteWatch(ctx.device, self._not_finite) if ctx.job.runtime.check_finite else None
        )

    def _not_finite(self, step: int) -> None:
        raise NonFiniteLatent(
            f"the latent of rank {self.ctx.comm.world.Get_rank()} holds NaN or Inf after step "
            f"{step} (image {self.image}); set runtime.check_finite=false to continue"
        )

    def begin(self, step: int, kind: str) -> None:
        if self.gpu_timer is not None:
            if step == 0:
                self.gpu_timer.start_image(self.image)
            self.gpu_timer.begin_step(self.image, step)
        self.ctx.comm.tracer.begin_step(self.image, step, kind)

    def end(self, step: int, latent: torch.Tensor) -> None:
        comm = self.ctx.comm
        comm.tracer.end_step()
        gpu_steps = []
        if self.gpu_timer is not None:
            self.gpu_timer.end_step()  # reads the earlier steps the GPU has finished
            gpu_steps = self.gpu_timer.take_ready()
        steps, exchanges, phases = comm.tracer.take_finished()
        self.rank_file.append(
            steps=steps,
            exchanges=exchanges,
            phases=phases,
            traffic=comm.counter.drain(),
            gpu_steps=gpu_steps,
        )
        self.bar.update(1)
        if self.finite is not None:  # on a GPU: reads the previous step's verdict
            self.finite.submit(step, latent)
        for hook in self.after_step:
            hook(self.image, step)
        signum = comm.max_over_ranks(self.signals.received)
        if signum:
            raise RunInterrupted(
                f"stopped after step {step} of image {self.image} by {signal.Signals(signum).name}"
            )

    def finish(self) -> None:
        """After the image's last step (and the synchronize that ends it): the finiteness
        verdicts and GPU step times not read yet."""
        if self.finite is not None:
            self.finite.finish()
        if self.gpu_timer is not None:
            self.gpu_timer.finish_image()
            self.rank_file.append(gpu_steps=self.gpu_timer.take_ready())


def _gpu_timer(ctx: BandContext) -> GpuStepTimer | None:
    """GPU-side step times when tracing on a GPU; None on the CPU (host times are exact)."""
    if ctx.device.type != "cuda" or not ctx.job.runtime.trace:
        return None
    return GpuStepTimer(ctx.device, ctx.comm.tracer.now)


DENOISE_RANGE = "pcpp-mpi denoise"  # names each image's denoising in a torch.profiler trace


def _generate_all(
    ctx: BandContext,
    decoder: ImageDecoder,
    run_file: RunFile | None,
    rank_file: RankFile,
    run_dir: Path,
    progress: bool,
    signals: StopSignals,
    after_step: Sequence[StepHook],
) -> None:
    job = ctx.job
    generation = job.generation
    comm = ctx.comm
    tracer = comm.tracer
    show = progress and comm.world.Get_rank() == 0
    gpu_timer = _gpu_timer(ctx)
    for index, prompt in enumerate(generation.prompts):
        negatives = generation.negative_prompts
        negative = negatives[index] if len(negatives) > 1 else negatives[0]
        seed = generation.seed + index
        if comm.world.Get_rank() == 0:
            _warn_if_truncated(ctx.bundle, index, prompt, negative)
        comm.counter.begin_image(index)
        bar = _progress_bar(generation.steps, f"image {index + 1}/{len(generation.prompts)}", show)
        hooks = _StepHooks(ctx, rank_file, bar, signals, index, gpu_timer, after_step)
        with tracer.phase("denoise", index), torch.profiler.record_function(DENOISE_RANGE):
            latent = denoise_band(ctx, prompt, negative, seed, hooks)
            hooks.finish()
        bar.close()
        image, full = decoder.finish(index, latent)
        _, exchanges, phases = tracer.take_finished()
        rank_file.append(traffic=comm.counter.drain(), exchanges=exchanges, phases=phases)
        if run_file is not None:
            assert image is not None
            with tracer.phase("write", index):
                latent_bytes = full.nbytes if full is not None else 0
                check_free_space(run_dir, need=2 * image.nbytes + latent_bytes)
                if full is not None and job.output.latents:
                    run_file.add_latent(index, full[0].numpy())
                run_file.add_image(index, image, prompt, seed)
                if job.output.png:
                    write_png(run_dir / f"image-{index:04d}.png", image)
            log.info("image %d written (seed %d)", index, seed)


def _warn_if_truncated(bundle: ModelBundle, index: int, prompt: str, negative: str) -> None:
    """One warning per prompt (and negative prompt) of image ``index`` that the text encoder
    does not read whole."""
    for what, text in (("prompt", prompt), ("negative prompt", negative)):
        cut = bundle.encoder.truncation(text)
        if cut is not None:
            log.warning("image %d: the %s is truncated (%s): %.60r...", index, what, cut, text)


def _progress_bar(total: int, description: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", disable=not show, file=sys.stderr)


class _FailureRecorder:
    """Rank 0's record of the first failure (from its own thread or the failure channel).

    Once ``failed`` is recorded the job is about to be aborted (``MPI_Abort`` ends rank 0 too,
    so no ``finally`` runs): the run directory's lock is released right after the record, so
    the next job into the directory is not refused by a stale lock.
    """

    def __init__(self, run_file: RunFile | None, lock: RunLock | None) -> None:
        self.run_file = run_file
        self.lock = lock
        self.recorded = False

    def record(self, rank: int, message: str) -> None:
        if self.recorded or self.run_file is None or self.run_file.closed:
            return
        self.recorded = True
        with contextlib.suppress(Exception):
            self.run_file.set_status("failed", error=f"rank {rank}: {message}")
        if self.lock is not None:
            self.lock.release()


def _fail(
    comm: RankComm, channel: FailureChannel, recorder: _FailureRecorder, message: str
) -> None:
    """Record the failure; with other ranks alive, end the whole job (they may be blocked)."""
    rank = comm.world.Get_rank()
    if rank == 0:
        recorder.record(0, message)
    if comm.world.Get_size() > 1:
        sys.stderr.write(f"pcpp-mpi [rank {rank}] error: {message}\n")
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        channel.report(message)
        comm.abort(EXIT_FAILED)


EXIT_FAILED = 1
