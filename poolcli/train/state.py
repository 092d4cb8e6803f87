"""The training state of a fine-tune, in one ``.safetensors`` file written atomically: the model's tensors, the
optimizer's tensors and every other number needed to continue (epoch, step within it, the epoch's running
sums, the history, the plateau rule's state, the best metric so far) in the JSON metadata. No pickle: a state
file is read like any other untrusted file (validated tensors, a JSON manifest checked key by key).

Randomness needs no saved generator: the data order of epoch e and the random draws of step s are seeded by
(seed, e, s) (:func:`step_seed`), so a run resumed at any step replays exactly what the uninterrupted run did.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from ..io.tensorfile import read_tensors, write_tensors
from ..text import quote

FORMAT = "poolcli.train-state/1"
EXPECTED_STATE = {
    "Adam": {"step", "exp_avg", "exp_avg_sq"},
    "AdamW": {"step", "exp_avg", "exp_avg_sq"},
    "SGD": {"momentum_buffer"},
}


def step_seed(seed: int, epoch: int, step: int, stream: str = "") -> int:
    """A 63-bit seed for (run seed, epoch, step, stream): independent of what ran before."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{step}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def save_state(
    path: str | Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_modules: list[nn.Module],
    meta: dict[str, Any],
) -> None:
    """Write the state atomically (a kill during the write leaves the previous state file)."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu() for k, v in module.state_dict().items()}
    for j, m in enumerate(extra_modules):
        tensors |= {f"extra{j}.{k}": v.detach().cpu() for k, v in m.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    manifest = {
        "format": FORMAT,
        **meta,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
    }
    write_tensors(
        path,
        {k: v.contiguous() for k, v in tensors.items()},
        manifest,
        what="the training state",
        hint="training produced non-finite weights: lower --lr",
    )


def load_state(
    path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer, extra_modules: list[nn.Module]
) -> dict[str, Any]:
    """Load a state written by :func:`save_state` into ``module``/``optimizer``; returns its metadata. The
    caller checks that the state belongs to this run (its ``fingerprint``)."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"--resume: no training state at {quote(p)}; start without --resume")
    tensors, meta = read_tensors(p)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(f"{quote(p)} is not a poolcli training state; start without --resume")
    try:
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        module.load_state_dict(model, strict=True)
        for j, m in enumerate(extra_modules):
            m.load_state_dict({k[len(f"extra{j}.") :]: v for k, v in tensors.items() if k.startswith(f"extra{j}.")})
        groups = meta["optimizer"]["param_groups"]
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for pid, vals in meta["optimizer"]["scalars"].items():
            state.setdefault(int(pid), {}).update(vals)
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        for g, mine in zip(optimizer.param_groups, settings):  # hyperparameters come from this run's options
            g.update(mine)
        params = [q for g in optimizer.param_groups for q in g["params"]]
        for q in params:
            for name, v in optimizer.state.get(q, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != q.shape:
                    raise ValueError(f"optimizer state {name} has shape {list(v.shape)} for a {list(q.shape)} tensor")
        expected = EXPECTED_STATE.get(type(optimizer).__name__)
        for st in optimizer.state.values():
            if expected is not None and not set(st) <= expected:
                raise ValueError(
                    f"optimizer state entries {sorted(set(st) - expected)} are not {type(optimizer).__name__}'s"
                )
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise BadInputError(
            f"{quote(p)} does not fit this model and optimizer ({first}); start without --resume"
        ) from None
    return meta
