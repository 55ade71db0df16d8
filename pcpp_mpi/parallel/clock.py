"""The denoising step as the parallel layers see it: fresh, displaced, or local."""

from __future__ import annotations

from dataclasses import dataclass

from pcpp_mpi.plan.schedule import StepKind, StepPhase, phase_of, step_kind


@dataclass
class StepClock:
    """Owned by the denoising loop, read by every parallel layer.

    ``kind`` of the current step decides what a layer does:

    - ``local``: no communication (``naive``);
    - ``sync``: post fresh data and wait for it at once (exact);
    - ``displaced``: use what the previous step sent, post this step's data for the next;
    - ``displaced_last``: as displaced, but post nothing (no step follows).

    ``phase`` is what a step's *compiled* layer code may depend on (``local``, ``fresh`` or
    ``stale``): ``torch.compile`` guards on every attribute the traced code reads, so the
    compiled layers read only this one and the step-to-step details (step number, parity,
    whether to post, the previous step's kind) stay inside the exchange operations.
    """

    mode: str
    steps: int
    warmup_steps: int
    step: int = -1
    kind: StepKind = "local"
    previous_kind: StepKind | None = None
    phase: StepPhase = "local"

    def begin(self, step: int) -> None:
        if step != self.step + 1:
            raise RuntimeError(f"step {step} follows step {self.step}")
        self.previous_kind = self.kind if step > 0 else None
        self.step = step
        self.kind = step_kind(step, self.steps, self.mode, self.warmup_steps)
        self.phase = phase_of(self.kind)
        if self.kind in ("displaced", "displaced_last") and self.previous_kind is None:
            raise RuntimeError("a displaced step needs a previous step")

    def reset(self) -> None:
        """Start a new image at step 0."""
        self.step = -1
        self.kind = "local"
        self.previous_kind = None
        self.phase = "local"

    @property
    def fresh(self) -> bool:
        return self.kind == "sync"

    @property
    def displaced(self) -> bool:
        return self.kind in ("displaced", "displaced_last")

    @property
    def posts_for_next(self) -> bool:
        return self.kind == "displaced"
