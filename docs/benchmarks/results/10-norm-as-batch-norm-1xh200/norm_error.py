"""CPU check behind the README's per-layer error figures: mean absolute error of a float16
BandGroupNorm (one band, sync statistics) against a float64 GroupNorm, for the form before
commit 22dee47 (scale and shift rounded to float16) and the current one, and PyTorch's own
float16 group_norm. Run from the repository root:

    git show 9714b74:pcpp_mpi/parallel/band_norm.py > /tmp/old_band_norm.py
    .venv/bin/python docs/benchmarks/results/10-norm-as-batch-norm-1xh200/norm_error.py
"""

import importlib.util

import torch
from torch import nn

from pcpp_mpi.parallel.band_norm import BandGroupNorm
from pcpp_mpi.parallel.clock import StepClock

spec = importlib.util.spec_from_file_location("old_band_norm", "/tmp/old_band_norm.py")
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)


class OneBand:
    """The statistics exchange of a single band: its own statistics are the global ones."""

    def post(self, step, local):
        self.local = local

    def wait(self, step):
        return self.local

    def wait_others(self, step):
        return torch.zeros_like(self.local)


torch.manual_seed(0)
errors = {"before": [], "now": [], "torch group_norm": []}
for _ in range(5):
    norm = nn.GroupNorm(32, 320, eps=1e-5).requires_grad_(False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = (torch.randn(2, 320, 32, 64) * 4 + 2).half()
    exact = nn.functional.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-5)
    half = norm.half()
    for name, cls in (("before", old.BandGroupNorm), ("now", BandGroupNorm)):
        clock = StepClock("sync", 1, 0)
        clock.begin(0)
        out = cls(half, OneBand(), clock)(x)
        errors[name].append((out.double() - exact).abs().mean().item())
    native = nn.functional.group_norm(x, 32, half.weight, half.bias, 1e-5)
    errors["torch group_norm"].append((native.double() - exact).abs().mean().item())
    norm.float()
for name, values in errors.items():
    print(f"{name:17s} mean abs error {sum(values) / len(values):.3e}")
