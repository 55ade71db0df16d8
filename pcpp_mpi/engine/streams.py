"""The CUDA stream a rank computes on.

PyTorch queues work on the CUDA *legacy default stream* unless told otherwise, and that stream
synchronises with every *blocking* stream of the process: work queued on a blocking stream
waits for everything queued before it on the default stream, and the other way round. A
CUDA-aware Open MPI copies device messages on blocking streams of its own (``cuStreamCreate``
with flags 0 in its CUDA support): a receive whose copy is queued while the rank's UNet graph
runs on the default stream would start only after that graph, so transfers could never overlap
with compute. Ranks therefore compute on a non-blocking stream (PyTorch's stream pool creates
``cudaStreamNonBlocking`` streams); ``runtime.compute_stream: default`` keeps the old behaviour,
for measuring the difference.

Correctness never relied on that serialisation: an MPI start waits for an event recorded after
the kernels that fill its send buffer or last read its receive buffer (``comm.deferred``), and a
kernel reading received data is launched only after the host completed its receive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pcpp_mpi.config.schema import ComputeStreamName


@contextlib.contextmanager
def compute_stream(device: torch.device, choice: ComputeStreamName) -> Iterator[None]:
    """Run the body with a new non-blocking stream of ``device`` as PyTorch's current stream.

    The stream first waits for the work already queued on the outer current stream (model
    weights copied to the device, for instance), and the outer stream waits for the body's work
    on exit, so code around the block needs no synchronisation of its own. A no-op on the CPU
    and with ``choice == "default"``.
    """
    if device.type != "cuda" or choice == "default":
        yield
        return
    outer = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(outer)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        outer.wait_stream(stream)
