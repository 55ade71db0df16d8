"""A gate kernel inside a CUDA graph, one GPU, one process (the probe behind gate-probe.json).

Run as ``python3 gate_probe.py OUT.json`` on the GPU machine. The kernel is the one of the
unlanded branch ``wip/graph-gates`` (``pcpp_mpi/engine/gate_kernel.py``), copied here.

1. does a captured gate hold a replay until the host releases it?
2. which host-side CUDA calls block while a gate spins (possible deadlocks with MPI's
   CUDA-aware path): cudaMalloc, cudaFree, cudaHostRegister, cudaIpcGetMemHandle, and in a
   second process cudaIpcOpenMemHandle and a plain matmul (time slicing between contexts).
"""

import json
import sys
import threading
import time

import numpy as np
import torch
import torch.multiprocessing as mp
import triton
import triton.language as tl


@triton.jit
def _hold_kernel(released_ptr, passed_ptr):
    target = tl.load(passed_ptr) + 1
    seen = tl.load(released_ptr, volatile=True)
    while seen < target:
        seen = tl.load(released_ptr, volatile=True)
    tl.store(passed_ptr, target)


class Gates:
    def __init__(self, dev, n=64):
        self.released = torch.zeros(n, dtype=torch.int64, pin_memory=True)
        self.view = self.released.numpy()
        self.passed = torch.zeros(n, dtype=torch.int64, device=dev)
        self.used = 0

    def add(self):
        s = self.used
        self.used += 1
        _hold_kernel[(1,)](self.released[s : s + 1], self.passed[s : s + 1], num_warps=1)
        return s

    def release(self, s):
        self.view[s] += 1


def child(q_in, q_out):
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    (a @ a).sum().item()
    q_out.put("ready")
    while True:
        msg = q_in.get()
        if msg == "stop":
            return
        if msg == "matmul":
            t0 = time.perf_counter()
            for _ in range(10):
                _ = a @ a
            torch.cuda.synchronize()
            q_out.put(("matmul", time.perf_counter() - t0))
        elif isinstance(msg, tuple) and msg[0] == "tensor":
            t0 = time.perf_counter()
            t = msg[1]  # rebuilt on receipt: cudaIpcOpenMemHandle
            q_out.put(("ipc_open", time.perf_counter() - t0))
            del t


def timed_while_held(name, fn, gates, slot, results, timeout=3.0):
    """Run fn in a thread while the gate holds; report whether it finished before release."""
    done = threading.Event()
    box = {}

    def run():
        t0 = time.perf_counter()
        try:
            fn()
            box["ok"] = True
        except Exception as e:
            box["error"] = repr(e)
        box["t"] = time.perf_counter() - t0
        done.set()

    th = threading.Thread(target=run)
    th.start()
    finished_before = done.wait(timeout)
    gates.release(slot)
    done.wait(30)
    results[name] = {
        "finished_while_held": finished_before,
        "seconds": box.get("t"),
        **({"error": box["error"]} if "error" in box else {}),
    }
    print(name, results[name], flush=True)


def main():
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    res = {}
    stream = torch.cuda.Stream(dev)
    gates = Gates(dev)
    a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    with torch.cuda.stream(stream):
        (a @ a).sum().item()  # warm cuBLAS outside capture
        gates.view[0] = 1
        gates.add()
        torch.cuda.synchronize()
        res["eager_check_passed"] = int(gates.passed[0].item())
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(dev)
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            g.capture_begin()
            b = a @ a
            slot = gates.add()
            _ = b @ a
            g.capture_end()
        stream.wait_stream(side)
        print("captured", flush=True)
        reps = []
        for _rep in range(3):
            t0 = time.perf_counter()
            g.replay()
            ev = torch.cuda.Event()
            ev.record()
            time.sleep(0.05)
            q = ev.query()
            gates.release(slot)
            ev.synchronize()
            reps.append({"done_before_release": q, "ms": (time.perf_counter() - t0) * 1e3})
        res["graph_replays"] = reps
        print(reps, flush=True)

        ctx = mp.get_context("spawn")
        q_in, q_out = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=child, args=(q_in, q_out))
        p.start()
        print("child", q_out.get(timeout=120), flush=True)
        shared = torch.ones(1 << 20, device=dev)
        torch.cuda.synchronize()

        def held(name, fn):
            g.replay()
            time.sleep(0.02)
            timed_while_held(name, fn, gates, slot, res)
            stream.synchronize()

        held("cudaMalloc_1GiB", lambda: torch.empty(1 << 30, dtype=torch.uint8, device=dev))
        held("cudaFree_empty_cache", torch.cuda.empty_cache)
        buf = np.zeros(1 << 24, dtype=np.uint8)
        cudart = torch.cuda.cudart()
        held(
            "cudaHostRegister_16MiB",
            lambda: cudart.cudaHostRegister(buf.ctypes.data, buf.nbytes, 0),
        )
        fresh = torch.ones(1 << 22, device=dev)
        held("cudaIpcGetMemHandle", lambda: fresh.untyped_storage()._share_cuda_())
        held("cudaEventSynchronize_other_stream", lambda: torch.cuda.Event().synchronize())

        def child_matmul():
            q_in.put("matmul")
            res["child_matmul_seconds"] = q_out.get(timeout=60)[1]

        held("other_process_matmul", child_matmul)

        def child_open():
            q_in.put(("tensor", shared))
            res["child_ipc_open_seconds"] = q_out.get(timeout=60)[1]

        held("other_process_ipc_open", child_open)
        q_in.put("stop")
        p.join(30)
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
