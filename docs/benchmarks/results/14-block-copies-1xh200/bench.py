"""Time one halo assembly: Triton block copies against torch.cat plus two copies (GPU)."""

import time

import torch

from pcpp_mpi.parallel import copy_kernels as k

d = torch.device("cuda")
k.self_check(d)
x = torch.randn(2, 320, 64, 128, device=d, dtype=torch.float16)
ext = torch.empty(2, 320, 66, 128, device=d, dtype=torch.float16)
up = torch.randn(2, 320, 1, 128, device=d, dtype=torch.float16)
dn = torch.randn_like(up)
s1 = torch.empty_like(up)
s2 = torch.empty_like(up)
e = ext.view(640, -1)
r = x.view(640, -1)
pairs = [
    (r, e[:, 128 : 128 + 8192]),
    (up.view(640, -1), e[:, :128]),
    (dn.view(640, -1), e[:, 128 + 8192 :]),
    (r[:, :128], s1.view(640, -1)),
    (r[:, -128:], s2.view(640, -1)),
]


def fused():
    k.copy_blocks(pairs)


def torchway():
    torch.cat([up, x, dn], 2)
    s1.copy_(x[:, :, :1])
    s2.copy_(x[:, :, -1:])


for f in (fused, torchway):
    for _ in range(10):
        f()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(100):
            f()
    g.replay()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(10):
        g.replay()
    torch.cuda.synchronize()
    print(f.__name__, (time.time() - t) / 1000 * 1e6, "us per call")
fused()
print(
    "equal",
    torch.equal(ext, torch.cat([up, x, dn], 2)),
    torch.equal(s1, x[:, :, :1]),
    torch.equal(s2, x[:, :, -1:]),
)
