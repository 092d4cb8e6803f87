"""Device selection and seeding (shared by every command that runs a model)."""

from __future__ import annotations

import random

import numpy as np
import torch

from .errors import BadInputError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadInputError(f"unknown --device '{name}': use auto, cpu or cuda[:N]") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
