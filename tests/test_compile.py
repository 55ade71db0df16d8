"""The compiled path's pieces without MPI: the ``runtime.compile`` keys, the phase policy, the
inductor cache directory and the exchange operators under ``torch.compile``.

The distributed behaviour (compiled ``sync`` equals ``single``, compiled ``pcpp`` equals the
uncompiled one, bytes equal ``plan``) is in ``test_distributed.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pcpp_mpi.config import ConfigError, job_from_dict
from pcpp_mpi.engine.compile import (
    CACHE_VARIABLE,
    compile_enabled,
    compiled_phases,
    default_cache_dir,
    use_cache_dir,
)
from pcpp_mpi.geometry import conv_halo
from pcpp_mpi.parallel.band_norm import BandGroupNorm
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.exchange_ops import ExchangeOps
from pcpp_mpi.parallel.halo_conv import HaloConv2d


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (True, True), (False, False)])
def test_compile_accepts_auto_true_false(value: object, expected: object) -> None:
    assert job_from_dict({"runtime": {"compile": value}}).runtime.compile == expected


@pytest.mark.parametrize(("text", "expected"), [("off", False), ("on", True), ("true", True)])
def test_compile_from_set_option_uses_yaml_booleans(text: str, expected: bool) -> None:
    assert job_from_dict(None, [f"runtime.compile={text}"]).runtime.compile is expected


@pytest.mark.parametrize("value", ["yes", 1, 0, "inductor", None])
def test_compile_rejects_other_values_naming_key_and_choices(value: object) -> None:
    with pytest.raises(ConfigError, match=r"runtime\.compile: must be one of 'auto', true, false"):
        job_from_dict({"runtime": {"compile": value}})


def test_compile_backend_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.compile_backend: must be one of"):
        job_from_dict({"runtime": {"compile_backend": "cudagraphs"}})


def test_triton_norms_are_for_the_uncompiled_path() -> None:
    """Explicit ``triton`` GroupNorms and ``compile: true`` contradict each other; with
    ``compile: auto`` the Triton kernels win and the run is not compiled."""
    runtime = {"device": "cuda", "norm_kernels": "triton", "compile": True}
    with pytest.raises(ConfigError, match=r"runtime\.norm_kernels: 'triton' is for uncompiled"):
        job_from_dict({"runtime": runtime})
    runtime["compile"] = "auto"
    auto = job_from_dict({"runtime": runtime}).runtime
    assert not compile_enabled(auto, torch.device("cuda", 0))
    runtime["compile"] = False
    assert job_from_dict({"runtime": runtime}).runtime.norm_kernels == "triton"


def test_empty_compile_cache_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.compile_cache"):
        job_from_dict({"runtime": {"compile_cache": " "}})


def test_auto_compiles_on_gpus_only() -> None:
    auto = job_from_dict(None).runtime
    assert compile_enabled(auto, torch.device("cuda", 0))
    assert not compile_enabled(auto, torch.device("cpu"))
    forced = job_from_dict({"runtime": {"compile": True}}).runtime
    assert compile_enabled(forced, torch.device("cpu"))
    off = job_from_dict({"runtime": {"compile": False}}).runtime
    assert not compile_enabled(off, torch.device("cuda", 0))


@pytest.mark.parametrize(
    ("mode", "phase"),
    [("pcpp", "stale"), ("distrifusion", "stale"), ("sync", "fresh"), ("naive", "local"),
     ("single", "local")],
)  # fmt: skip
def test_a_run_compiles_the_phase_its_steps_are_made_of(mode: str, phase: str) -> None:
    assert compiled_phases(mode) == frozenset({phase})


def test_compile_warmup_adds_the_fresh_phase_to_displaced_modes_only() -> None:
    assert compiled_phases("pcpp", warmup=True) == frozenset({"stale", "fresh"})
    assert compiled_phases("distrifusion", warmup=True) == frozenset({"stale", "fresh"})
    assert compiled_phases("sync", warmup=True) == frozenset({"fresh"})
    assert compiled_phases("single", warmup=True) == frozenset({"local"})
    assert job_from_dict({"runtime": {"compile_warmup": True}}).runtime.compile_warmup


def test_cache_dir_from_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    chosen = use_cache_dir(str(tmp_path / "cache"))
    assert chosen == tmp_path / "cache" and chosen.is_dir()
    assert Path(torch_cache_env()) == chosen


def test_cache_dir_from_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "site"))
    assert use_cache_dir(str(tmp_path / "mine")) == tmp_path / "site"
    assert not (tmp_path / "mine").exists()


def test_default_cache_dir_is_under_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "pcpp-mpi" / "torch-compile"


def torch_cache_env() -> str:
    import os

    return os.environ[CACHE_VARIABLE]


class _Halo:
    """A stand-in halo layer: records what it was given, returns rows of a known value."""

    def __init__(self, above: int, below: int) -> None:
        self.above, self.below = above, below
        self.seen: list[torch.Tensor] = []

    def exchange_halo(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.seen.append(x.clone())
        batch, channels, _, width = x.shape
        return [torch.full((batch, channels, n, width), float(n)) for n in self._rows()]

    def received_halo_shapes(self, x: torch.Tensor) -> list[tuple[int, ...]]:
        batch, channels, _, width = x.shape
        return [(batch, channels, n, width) for n in self._rows()]

    def _rows(self) -> list[int]:
        return [n for n in (self.above, self.below) if n]


class _Stats:
    def exchange_stats(self, local: torch.Tensor) -> torch.Tensor:
        return local * 2


def test_operator_namespaces_are_unique_while_open_and_reused_after_close() -> None:
    first, second = ExchangeOps(), ExchangeOps()
    try:
        assert first.namespace != second.namespace
        name = first.namespace
        first.close()
        third = ExchangeOps()
        assert third.namespace == name  # the same names (and cache keys) in every process
        third.close()
    finally:
        first.close()
        second.close()


def test_operators_run_the_layers_inside_a_compiled_graph() -> None:
    """Under ``torch.compile(fullgraph=True)`` each operator call reaches its layer once per
    call, with the traced input, and its declared shapes hold."""
    ops = ExchangeOps()
    try:
        halo = _Halo(above=1, below=0)
        index = ops.add_conv(halo)
        stats_index = ops.add_norm(_Stats())

        def step(x: torch.Tensor) -> torch.Tensor:
            (up,) = ops.halo(x * 2, index)
            total = ops.group_stats(x.sum(dim=(2, 3)).unsqueeze(0), stats_index)
            return torch.cat([up, x], dim=2).sum() + total.sum()

        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        x = torch.ones(1, 2, 3, 4)
        result = compiled(x)
        assert len(halo.seen) == 1 and torch.equal(halo.seen[0], x * 2)
        expected = (1.0 * 2 * 1 * 4) + x.sum() + 2 * x.sum()  # halo rows, band, doubled sums
        assert torch.allclose(result, expected)
        compiled(x)
        assert len(halo.seen) == 2
    finally:
        ops.close()
        torch.compiler.reset()


class _PersistentRows:
    """An exchange that, like the real ones, hands out the same receive buffers every step."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.received = torch.full(shape, 7.0)

    def post(self, step: int, to_up: object, to_down: object) -> None:
        pass

    def wait(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, self.received


class _PersistentStats:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.total = torch.full(shape, 3.0, dtype=torch.float64)

    def post(self, step: int, local: torch.Tensor) -> None:
        pass

    def wait(self, step: int) -> torch.Tensor:
        return self.total

    def wait_others(self, step: int) -> torch.Tensor:
        return self.total


@pytest.mark.parametrize("step", [0, 1])  # a sync step, then a displaced one
def test_operators_never_return_an_exchange_buffer(step: int) -> None:
    """What an operator returns belongs to the compiled graph, which reuses its memory for
    temporaries once read (inductor does; it overwrote the previous step's halo rows in the dry
    run that compiles a phase): the layers hand out copies, never the exchange's buffers."""
    clock = StepClock("distrifusion", steps=3, warmup_steps=1)
    for s in range(step + 1):
        clock.begin(s)
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1).requires_grad_(False)
    x = torch.randn(1, 2, 4, 5)
    rows = _PersistentRows((1, 2, 1, 5))
    layer = HaloConv2d(conv, conv_halo(3, 1, 1, 1), rows, clock)
    (returned,) = [r for r in layer.exchange_halo(x) if not torch.equal(r, torch.zeros_like(r))]
    assert torch.equal(returned, rows.received)
    assert returned.untyped_storage().data_ptr() != rows.received.untyped_storage().data_ptr()

    stats = _PersistentStats((3, 1, 2))
    norm = BandGroupNorm(nn.GroupNorm(2, 2), stats, clock)
    out = norm.exchange_stats(torch.ones(3, 1, 2, dtype=torch.float64))
    assert torch.equal(out, stats.total)
    assert out.untyped_storage().data_ptr() != stats.total.untyped_storage().data_ptr()
