#!/usr/bin/env python3
"""Peak memory and time of the VAE decode: rank 0 alone (``rank0``) against every rank its
band (``parallel``), with the same code the runs use.

The VAE (SDXL's by default) gets random weights in ``--dtype`` on each rank's device (ranks
that share a GPU share it, ``local rank % device count``); a random latent of ``--size`` px is
decoded ``--repeats`` times after ``--warmup`` untimed decodes in each mode:

- ``rank0``: rank 0 decodes the whole latent and converts it to uint8 (the other ranks wait);
- ``parallel``: every rank decodes its band (equal bands of the latent, at least one row)
  through the band-parallel decoder, converts it to uint8 and sends the rows to rank 0, which
  assembles the image.

Per rank and mode: the peak of ``torch.cuda.max_memory_allocated`` during the decodes (the weights
and the latent included; on the CPU the process's peak resident set instead, which never decreases)
and the median decode time (from a barrier to the assembled image on rank 0, the slowest rank's); a
rank-0 decode that runs out of GPU memory is reported as such (``out_of_memory``, its peak is then
the memory it had when it failed). A float16 VAE with ``force_upcast`` in its config (SDXL's)
decodes in float32, as runs do; ``--no-upcast`` keeps float16. Output: ``decode.json`` and
``decode.md`` in ``--out``.

    mpirun -np 2 python3 tools/bench_decode.py --size 2048 4096 --out decode-bench

Exit status: 0 measured, 2 bad arguments; a rank that fails otherwise (e.g. a ``parallel`` band
decode out of GPU memory) prints its error and aborts the job (MPI_Abort) instead of leaving
its partners waiting.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.engine.decode import to_uint8  # noqa: E402
from pcpp_mpi.families.vae_decoder.band_decode import decode_band  # noqa: E402
from pcpp_mpi.families.vae_decoder.inventory import decode_latent, trace_decoder  # noqa: E402
from pcpp_mpi.geometry import GeometryError, split_bands  # noqa: E402
from pcpp_mpi.models.random_arch import arch_vae_config, build_random  # noqa: E402
from pcpp_mpi.models.tiny import tiny_vae_config  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("rank0", "parallel")
EXIT_BAD_ARGUMENTS = 2


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[2048], help="image sizes, px")
    parser.add_argument("--out", required=True, help="directory for decode.json and decode.md")
    parser.add_argument("--arch", choices=("sdxl", "sd15", "sd21", "tiny"), default="sdxl")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float16")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-upcast", action="store_true", help="decode float16 in float16")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def check(args: argparse.Namespace, n_ranks: int) -> str | None:
    """What is wrong with the arguments, before any work (``None``: nothing)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: torch sees no CUDA device"
    if args.repeats < 1 or args.warmup < 0:
        return "--repeats must be >= 1 and --warmup >= 0"
    factor = 8
    for size in args.size:
        if size < factor or size % factor:
            return f"--size {size}: not a positive multiple of the VAE scale factor {factor}"
        if size // factor < n_ranks:
            return f"--size {size}: {size // factor} latent rows for {n_ranks} ranks"
    return None


def vae_config(args: argparse.Namespace) -> dict[str, Any]:
    config = dict(tiny_vae_config(1.0) if args.arch == "tiny" else arch_vae_config(args.arch))
    if args.no_upcast:
        config["force_upcast"] = False
    return config


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def settle(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    comm: RankComm,
    vae: AutoencoderKL,
    config: dict[str, Any],
    size: int,
    mode: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One size and mode on this rank: its peak memory and the decode times."""
    world = comm.world
    device = vae.device
    latent_size = size // 8
    generator = torch.Generator("cpu").manual_seed(args.seed)
    latent = torch.randn(
        1, config["latent_channels"], latent_size, latent_size, generator=generator
    )
    latent = latent.to(device, vae.dtype)
    bands = split_bands(latent_size, world.Get_size(), 1)
    group = comm.band_group(world.Get_rank()) if mode == "parallel" else None
    inventory = trace_decoder(config, latent_size, latent_size) if group else None
    wire = comm.wire_spec(device, vae.dtype)
    times = []
    out_of_memory = False
    settle(device)
    reset_peak(device)
    for repeat in range(args.warmup + args.repeats):
        world.Barrier()
        start = time.perf_counter()
        if group is None:
            if world.Get_rank() == 0:
                try:
                    with torch.no_grad():
                        image = to_uint8(decode_latent(vae, latent))
                    assert image.shape == (size, size, 3)
                except torch.OutOfMemoryError:
                    # only rank 0 works in this mode, so it can report instead of hanging
                    out_of_memory = True
        else:
            assert inventory is not None
            band = bands[group.rank]
            rows = latent[:, :, band.start : band.stop]
            pixels = to_uint8(decode_band(vae, inventory, group, bands, rows, step=0, wire=wire))
            image = group.gather_rows(0, "image", pixels, [b.rows * 8 for b in bands])
            assert group.rank != 0 or (image is not None and image.shape == (size, size, 3))
        settle(device)
        elapsed = world.allreduce(time.perf_counter() - start, op=MPI.MAX)
        if world.allreduce(out_of_memory, op=MPI.LOR):
            out_of_memory = True
            break
        if repeat >= args.warmup:
            times.append(elapsed)
    peak = peak_bytes(device)
    if device.type == "cuda":
        # ranks sharing a GPU: what this mode cached must not starve the next mode's ranks
        torch.cuda.empty_cache()
    world.Barrier()
    if group is not None:
        group.free()
    comm.counter.drain()
    comm.tracer.take_finished()
    return {
        "size": size,
        "mode": mode,
        "rank": world.Get_rank(),
        "latent_rows": [bands[world.Get_rank()].start, bands[world.Get_rank()].stop]
        if mode == "parallel"
        else ([0, latent_size] if world.Get_rank() == 0 else None),
        "peak_memory_bytes": peak,
        "out_of_memory": out_of_memory,
        "time_median_s": statistics.median(times) if times else None,
        "times_s": times,
    }


def markdown(report: dict[str, Any]) -> str:
    """The per-rank table and, per size, the parallel peak as a share of the rank0 peak."""
    lines = [
        f"# VAE decode: {report['arch']}, {report['dtype']} weights, decodes in "
        f"{report['decode_dtype']}, {report['ranks']} rank(s) on {report['device']}",
        "",
        "| size | mode | rank | latent rows | peak memory (MiB) | median time (s) |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for r in report["results"]:
        rows = (
            "-" if r["latent_rows"] is None else f"[{r['latent_rows'][0]}, {r['latent_rows'][1]})"
        )
        median = "out of memory" if r["time_median_s"] is None else f"{r['time_median_s']:.3f}"
        lines.append(
            f"| {r['size']} | {r['mode']} | {r['rank']} | {rows} | "
            f"{r['peak_memory_bytes'] / 2**20:.1f} | {median} |"
        )
    lines += ["", "| size | rank0 peak (MiB) | parallel peak, max over ranks (MiB) | share |"]
    lines.append("|---:|---:|---:|---:|")
    for entry in report["shares"]:
        lines.append(
            f"| {entry['size']} | {entry['rank0_peak_bytes'] / 2**20:.1f} | "
            f"{entry['parallel_peak_bytes'] / 2**20:.1f} | {entry['share']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def shares(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: rank 0's peak decoding alone, the largest rank peak in parallel, their ratio."""
    out = []
    for size in sorted({r["size"] for r in results}):
        alone = [
            r for r in results if r["size"] == size and r["mode"] == "rank0" and r["rank"] == 0
        ]
        parallel = [r for r in results if r["size"] == size and r["mode"] == "parallel"]
        if alone and parallel and not alone[0]["out_of_memory"]:
            single = alone[0]["peak_memory_bytes"]
            most = max(r["peak_memory_bytes"] for r in parallel)
            out.append(
                {"size": size, "rank0_peak_bytes": single, "parallel_peak_bytes": most,
                 "share": most / single}
            )  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    world = MPI.COMM_WORLD
    problem = check(args, world.Get_size())
    if problem is not None:
        if world.Get_rank() == 0:
            print(f"bench_decode: error: {problem}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    comm = RankComm(world, 1)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", comm.local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)
    config = vae_config(args)
    dtype = DTYPES[args.dtype]
    vae = build_random(AutoencoderKL, config, args.seed, dtype, device)
    if dtype == torch.float16 and config.get("force_upcast", False):
        vae = vae.to(torch.float32)  # as runs decode (engine.decode.decoding_vae)
    results = []
    try:
        for size in args.size:
            for mode in args.modes:
                results += world.gather(measure(comm, vae, config, size, mode, args)) or []
    except GeometryError as error:  # pragma: no cover - check() rules these out
        print(f"bench_decode: error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    except Exception as error:
        # e.g. a band decode out of GPU memory: its partners would wait for it forever
        print(f"bench_decode: rank {world.Get_rank()}: {error!r}; ending the job", file=sys.stderr)
        sys.stderr.flush()
        world.Abort(1)
    finally:
        comm.free()
    if world.Get_rank() == 0:
        report = {
            "arch": args.arch,
            "dtype": args.dtype,
            "decode_dtype": str(vae.dtype).removeprefix("torch."),
            "ranks": world.Get_size(),
            "device": torch.cuda.get_device_name(device) if use_cuda else "cpu",
            "peak_memory": "torch.cuda.max_memory_allocated" if use_cuda else "peak RSS",
            "repeats": args.repeats,
            "warmup": args.warmup,
            "results": results,
            "shares": shares(results),
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "decode.json").write_text(json.dumps(report, indent=1))
        (out / "decode.md").write_text(markdown(report))
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
