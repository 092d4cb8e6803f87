"""Learning-rate schedules as pure functions of the position in training (plus the plateau rule's small state),
so that a resumed run sets exactly the learning rate an uninterrupted one would.

* ``cosine``: lr · ½(1 + cos(π t / T)) per step after the warmup (T the steps after warmup; timm's and
  torchvision's reference recipes);
* ``step:E1,E2,...``: lr × 0.1 from each listed epoch on (seed 001's step decay, e.g. ``step:150,250``);
* ``constant``: lr (seed 001's fixed-lr Adam);
* ``plateau`` / ``plateau:P``: lr × 0.1 after P (default 5) epochs without improvement of the validation
  metric (the training loss without ``--val``), as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` with
  ``threshold=0``;

with ``warmup`` epochs of a linear ramp from lr / (warmup steps) to lr, per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import BadInputError
from ..text import quote

KINDS = ("cosine", "step", "constant", "plateau")
DECAY = 0.1


@dataclasses.dataclass
class Schedule:
    kind: str
    milestones: tuple[int, ...] = ()  # step: 1-based epochs from which the lr is multiplied by 0.1 once more
    patience: int = 5  # plateau
    warmup: int = 0  # epochs
    # plateau's state (saved with the training state)
    best: float | None = None
    bad_epochs: int = 0
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str, warmup: int = 0) -> Schedule:
        kind, _, arg = text.partition(":")
        if warmup < 0:
            raise BadInputError(f"--warmup must be ≥ 0 epochs, got {warmup}")
        if kind not in KINDS:
            raise BadInputError(
                f"unknown --schedule {quote(text)}: use cosine, step:E1,E2 (×0.1 at those epochs), constant or "
                "plateau[:PATIENCE]"
            )
        try:
            if kind == "step":
                ms = tuple(sorted({int(v) for v in arg.split(",") if v.strip()}))
                if not ms or ms[0] < 1:
                    raise ValueError
                return cls(kind, milestones=ms, warmup=warmup)
            if kind == "plateau":
                patience = int(arg) if arg else 5
                if patience < 1:
                    raise ValueError
                return cls(kind, patience=patience, warmup=warmup)
            if arg:
                raise ValueError
        except ValueError:
            raise BadInputError(
                f"bad --schedule {quote(text)}: step:E1,E2 takes epochs ≥ 1 (e.g. step:150,250), plateau:P a "
                "patience ≥ 1, cosine and constant take nothing"
            ) from None
        return cls(kind, warmup=warmup)

    def describe(self) -> str:
        base = {
            "cosine": "cosine",
            "step": "step ×0.1 at epochs " + ",".join(map(str, self.milestones)),
            "constant": "constant",
            "plateau": f"×0.1 after {self.patience} epochs without improvement",
        }[self.kind]
        return base + (f", {self.warmup} warmup epochs" if self.warmup else "")

    def factor(self, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
        """The multiplier of the base lr at 0-based ``epoch`` and 0-based ``step`` within it (before the step)."""
        t = epoch * steps_per_epoch + step
        warm = self.warmup * steps_per_epoch
        if t < warm:
            return (t + 1) / warm
        if self.kind == "cosine":
            total = max(1, epochs * steps_per_epoch - warm)
            return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / total))
        if self.kind == "step":
            return DECAY ** sum(1 for m in self.milestones if epoch + 1 >= m)
        if self.kind == "plateau":
            return self.scale
        return 1.0

    def end_epoch(self, metric: float, higher_is_better: bool) -> None:
        """Plateau's rule, after each epoch (no-op for the others)."""
        if self.kind != "plateau":
            return
        value = metric if higher_is_better else -metric
        if self.best is None or value > self.best:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= DECAY
            self.bad_epochs = 0

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}

    def load(self, state: dict[str, Any]) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.bad_epochs, self.scale = int(state.get("bad_epochs", 0)), float(state.get("scale", 1.0))
