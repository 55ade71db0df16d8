"""A run as Chrome trace-event JSON (opens in https://ui.perfetto.dev and chrome://tracing).

Layout: one process per rank (``pid`` = world rank, named after its band, CFG group and
host); in it, thread ``steps`` holds one slice per denoising step, thread ``waits`` one slice
per wait (the exposed communication, named after the layer), thread ``phases`` the set-up
phases (model load, set-up, denoise, gather, decode, write). Every point-to-point message is an
async slice on its sender from post to the sender's wait end, and on its receiver from post to
the receiver's wait end, named ``<kind> -> rank N`` / ``<kind> <- rank N``; collectives appear
on their rank as ``<kind> all-reduce``. A flow arrow leads from each send (inside the
sender's step slice, at its post time) to the wait slice on the receiver that completed the
receive. Timestamps are microseconds on the axis chosen by :mod:`pcpp_mpi.analysis.clock`.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from pcpp_mpi.analysis.clock import Clock, rank_offsets
from pcpp_mpi.analysis.files import RunTrace
from pcpp_mpi.analysis.messages import match_messages
from pcpp_mpi.analysis.stats import group_exchanges

TID_STEPS = 1
TID_WAITS = 2
TID_PHASES = 3
THREADS = MappingProxyType(
    {TID_STEPS: "steps", TID_WAITS: "waits (exposed communication)", TID_PHASES: "phases"}
)
US = 1e6  # microseconds per second


def _us(seconds: float) -> float:
    return round(seconds * US, 3)


def _metadata(run: RunTrace) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for trace in run.ranks:
        pid = trace.rank
        label = (
            f"rank {trace.rank} (band {trace.band_index}, cfg {trace.cfg_index}, "
            f"{trace.host}, {trace.device}, {trace.status})"
        )
        events.append(
            {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}}
        )
        events.append(
            {
                "ph": "M",
                "name": "process_sort_index",
                "pid": pid,
                "tid": 0,
                "args": {"sort_index": pid},
            }
        )
        for tid, name in THREADS.items():
            events.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}
            )
            events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": pid,
                    "tid": tid,
                    "args": {"sort_index": tid},
                }
            )
    return events


def _slices(run: RunTrace, offsets: dict[int, float]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for trace in run.ranks:
        pid, shift = trace.rank, offsets[trace.rank]
        for row in trace.steps:
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": TID_STEPS,
                    "cat": "step",
                    "name": f"step {int(row['step'])} ({row['kind']})",
                    "ts": _us(row["t_start"] + shift),
                    "dur": _us(row["wall"]),
                    "args": {
                        "image": int(row["image"]),
                        "step": int(row["step"]),
                        "kind": str(row["kind"]),
                        "wall_s": float(row["wall"]),
                        "compute_s": float(row["compute"]),
                        "exposed_comm_s": float(row["exposed_comm"]),
                    },
                }
            )
        exchanges = group_exchanges(trace.exchanges)
        for i in range(len(exchanges)):
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": TID_WAITS,
                    "cat": f"wait,{exchanges.kind[i]}",
                    "name": str(exchanges.layer[i]),
                    "ts": _us(exchanges.t_wait_start[i] + shift),
                    "dur": _us(exchanges.t_wait_end[i] - exchanges.t_wait_start[i]),
                    "args": {
                        "kind": str(exchanges.kind[i]),
                        "posted_in_step": int(exchanges.step[i]),
                        "waited_in_step": int(exchanges.waited_in_step[i]),
                        "image": int(exchanges.image[i]),
                        "sent_bytes": int(exchanges.sent[i]),
                        "received_bytes": int(exchanges.received[i]),
                        "messages": int(exchanges.messages[i]),
                        "in_flight_s": float(exchanges.in_flight[i]),
                    },
                }
            )
        for row in trace.phases:
            events.append(
                {
                    "ph": "X",
                    "pid": pid,
                    "tid": TID_PHASES,
                    "cat": "phase",
                    "name": str(row["name"]),
                    "ts": _us(row["t_start"] + shift),
                    "dur": _us(max(row["t_end"] - row["t_start"], 0.0)),
                    "args": {"image": int(row["image"])},
                }
            )
    return events


def _async_messages(run: RunTrace, offsets: dict[int, float]) -> list[dict[str, Any]]:
    """One async slice per exchange row that completed (per peer and direction)."""
    events: list[dict[str, Any]] = []
    next_id = 0
    for trace in run.ranks:
        pid, shift = trace.rank, offsets[trace.rank]
        rows = trace.exchanges[trace.exchanges["t_wait_end"] >= 0]
        for row in rows:
            kind = str(row["kind"])
            peer = run.world_rank(trace, int(row["peer"]), kind)
            args = {
                "layer": str(row["layer"]),
                "image": int(row["image"]),
                "step": int(row["step"]),
                "sent_bytes": int(row["sent"]),
                "received_bytes": int(row["received"]),
                "waited_in_step": int(row["waited_in_step"]),
            }
            if peer is None:
                names = [(f"{kind} all-reduce", args)]
            else:
                names = []
                if row["sent"] > 0:
                    names.append((f"{kind} -> rank {peer}", args))
                if row["received"] > 0:
                    names.append((f"{kind} <- rank {peer}", args))
            for name, arguments in names:
                next_id += 1
                common = {
                    "pid": pid,
                    "tid": TID_STEPS,
                    "cat": f"message,{kind}",
                    "name": name,
                    "id": f"0x{next_id:x}",
                }
                events.append(
                    {**common, "ph": "b", "ts": _us(row["t_post"] + shift), "args": arguments}
                )
                events.append({**common, "ph": "e", "ts": _us(row["t_wait_end"] + shift)})
    return events


def _flows(run: RunTrace, offsets: dict[int, float]) -> tuple[list[dict[str, Any]], dict]:
    matching = match_messages(run)
    events: list[dict[str, Any]] = []
    for flow_id, message in enumerate(matching.matched, start=1):
        assert message.recv_wait_start is not None and message.recv_done is not None
        end = (message.recv_wait_start + message.recv_done) / 2 + offsets[message.dst]
        common = {
            "cat": f"flow,{message.kind}",
            "name": f"{message.kind} {message.layer}",
            "id": flow_id,
        }
        events.append(
            {
                **common,
                "ph": "s",
                "pid": message.src,
                "tid": TID_STEPS,
                "ts": _us(message.send_post + offsets[message.src]),
            }
        )
        events.append(
            {**common, "ph": "f", "bp": "e", "pid": message.dst, "tid": TID_WAITS, "ts": _us(end)}
        )
    stats = {
        "messages": len(matching.messages),
        "matched": len(matching.matched),
        "unmatched_sends": matching.unmatched_sends,
        "unmatched_receives": matching.unmatched_receives,
    }
    return events, stats


def trace_events(run: RunTrace, clock: Clock = "barrier") -> dict[str, Any]:
    """The whole trace-event document: ``{"traceEvents": [...], "displayTimeUnit", ...}``."""
    offsets = rank_offsets(run, clock)
    flows, flow_stats = _flows(run, offsets)
    events = _metadata(run) + _slices(run, offsets) + _async_messages(run, offsets) + flows
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "run": str(run.directory),
            "mode": run.mode,
            "status": run.status,
            "n_ranks": run.n_ranks,
            "clock": clock,
            "step_times": run.step_clock,
            "notes": " | ".join(run.notes()),
            **{k: str(v) for k, v in flow_stats.items()},
        },
    }


def write_trace(run: RunTrace, path: str, clock: Clock = "barrier") -> dict[str, Any]:
    """Write :func:`trace_events` as JSON to ``path``; return the document."""
    document = trace_events(run, clock)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(document, out, separators=(",", ":"))
    return document
