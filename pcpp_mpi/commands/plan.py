"""``pcpp-mpi plan``: bands, halos, neighbour rows and bytes per step, without MPI or weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pcpp_mpi.commands.exits import EXIT_OK, EXIT_REJECTED
from pcpp_mpi.config.arguments import add_settings_argument

if TYPE_CHECKING:
    from pcpp_mpi.plan.report import JobPlan


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the top-level subparsers."""
    plan = sub.add_parser("plan", help="bands, halos and bytes per step, without MPI or weights")
    plan.add_argument("job", help="job YAML file")
    plan.add_argument("--ranks", type=int, required=True, help="number of ranks")
    add_settings_argument(plan, "parallel.ratio=0.5")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan of ``args.job`` on ``args.ranks`` ranks; 2 if the job is rejected."""
    from pcpp_mpi.config import ConfigError, load_job
    from pcpp_mpi.models import ModelError
    from pcpp_mpi.planning import make_plan

    try:
        job = load_job(args.job, args.overrides)
        plan = make_plan(job, args.ranks)
    except (ConfigError, ModelError) as exc:
        print(f"pcpp-mpi plan: error: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    print(json.dumps(plan.as_dict(), indent=1) if args.json else format_plan(plan))
    return EXIT_OK


def format_plan(plan: JobPlan) -> str:
    """A readable report of :meth:`JobPlan.as_dict`."""
    from pcpp_mpi.plan.report import PLAN_MODES

    data = plan.as_dict()
    lines = [
        f"{data['ranks']} rank(s): {len(data['bands'])} band(s) x {data['cfg_groups']} CFG "
        f"group(s); latent {data['latent'][0]}x{data['latent'][1]}, {data['levels']} levels, "
        f"band unit {data['unit']} rows; model batch per rank {data['batch']}; "
        f"{data['steps']} steps, warm-up {data['warmup_steps']}, pcpp ratio {data['ratio']}",
        f"layers split: {data['layers']['halo_convs']} convolutions with halos, "
        f"{data['layers']['group_norms']} GroupNorms, "
        f"{data['layers']['self_attentions']} self-attentions",
        "",
        "bands (latent rows [start, stop) at each level; pcpp rows received from the "
        "band above / below):",
    ]
    for rank in data["per_rank"]:
        levels = "  ".join(
            f"L{e['level']} [{e['rows'][0]},{e['rows'][1]}) "
            f"+{e['pcpp_rows_from_up']}/{e['pcpp_rows_from_down']}"
            for e in rank["levels"]
        )
        lines.append(
            f"  rank {rank['rank']:3d} band {rank['band']:3d} cfg {rank['cfg_group']}: {levels}"
        )
        lines.append(
            f"           halo rows per step over all convolutions: "
            f"{rank['halo_rows_from_up']} from above, {rank['halo_rows_from_down']} from below"
        )
    lines += [
        "",
        "MiB sent per rank and step (first step | steady step | whole image, gather included):",
    ]
    header = f"  {'rank':>4}  " + "  ".join(f"{m:>36}" for m in PLAN_MODES)
    lines.append(header)
    for rank in data["per_rank"]:
        cells = []
        for mode in PLAN_MODES:
            info = rank["modes"][mode]
            first = sum(info["first_step"]["sent"].values())
            steady = sum(info["steady_step"]["sent"].values())
            cells.append(f"{_mib(first)} |{_mib(steady)} |{_mib(info['run_sent'])}")
        lines.append(f"  {rank['rank']:>4}  " + "  ".join(f"{c:>36}" for c in cells))
    lines += _decode_lines(data)
    lines += [
        "",
        "Bytes count each point-to-point payload at sender and receiver; a GroupNorm all-reduce "
        "counts its payload (3 x batch x groups float64) once each way; displaced steps send "
        "what the next step uses, so the last step sends nothing.",
    ]
    return "\n".join(lines)


def _decode_lines(data: dict) -> list[str]:
    """The VAE decode: who decodes which latent rows, and the bytes of one image's decode."""
    decode = data["decode"]
    if decode["mode"] == "rank0":
        head = "rank 0 decodes the gathered latent alone (output.decode: rank0, or one rank)"
    else:
        head = (
            f"every rank decodes its band: {decode['halo_convs']} halo convolutions, "
            f"{decode['group_norms']} GroupNorms, {decode['self_attentions']} self-attention(s), "
            f"{decode['itemsize']} bytes per element; uint8 image rows to rank 0"
            + ("; latent gathered for /latents" if decode["latents_gathered"] else "")
        )
    lines = ["", f"VAE decode: {head}", "  rank  latent rows    MiB sent / received per image"]
    for rank in data["per_rank"]:
        info = rank["decode"]
        band = info["band"]
        rows = "-" if band is None else f"[{band[0]},{band[1]})"
        by_kind = ", ".join(
            f"{kind} {_mib(info['sent'].get(kind, 0)).strip()} / "
            f"{_mib(info['received'].get(kind, 0)).strip()}"
            for kind in sorted(set(info["sent"]) | set(info["received"]))
        )
        lines.append(f"  {rank['rank']:>4}  {rows:>11}    {by_kind or 'nothing'}")
    return lines


def _mib(n: int) -> str:
    return f"{n / 2**20:10.3f}"
