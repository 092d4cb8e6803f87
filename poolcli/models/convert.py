"""Swap pooling at sites: ``@down3=learned:pool.safetensors``, ``@down1=ppool``, ``@global=gem:p=3``.

How a site is rewritten depends on what is there and what goes in:
- a pooling module (max/avg pool, a head's global pool): replaced by the new operator, which inherits
  the old one's kernel/stride/padding (``mode: replace``);
- a strided conv with learned pooling fitted ``--at input`` (seed 001's replacement): the conv is
  replaced; P maps its C input channels to k·C outputs on the conv's output grid (``mode: replace``);
- a strided conv with any other operator, or learned pooling fitted ``--at destrided``: the conv runs at
  stride 1 and the operator pools with the conv's window and stride, so the output grid is unchanged
  (the BlurPool / P-pooling recipe; ``mode: destride``).
After the swaps the model runs once on zeros and every swapped site must give the shape it gave before,
or the conversion fails with the site, both shapes and what to change. The swaps are recorded in the
checkpoint manifest (site, op, canonical params, mode) so that loading rebuilds the same structure;
tensors (learned P, conv weights) travel in the state_dict.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from ..io.poolfile import read_pooling
from ..ops.learned import LearnedLinearPool
from ..ops.registry import build_op, parse_op_spec, takes_channels
from ..runtime import seed_everything
from .bundle import ModelBundle
from .sites import Site, SiteReport, discover_sites, is_strided_conv
from .surgery import build_swap, get_submodule, set_submodule


@dataclasses.dataclass
class SwapResult:
    site: str
    alias: str | None
    kind: str
    old: str
    new: str
    mode: str
    shape: list[int]
    params_before: int
    params_after: int
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_swap(text: str) -> tuple[str, str]:
    """``@down3=learned:pool.safetensors`` → ("@down3", "learned:pool.safetensors")."""
    site, eq, spec = text.partition("=")
    if not eq or not site.strip() or not spec.strip():
        raise BadInputError(f"bad --swap '{text}': write SITE=OP, e.g. @down3=learned:pool.safetensors or @global=gem:p=3")
    return site.strip(), spec.strip()


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _learned_swap(spec_file: str, site: Site, old: nn.Module, trainable: bool) -> tuple[dict[str, Any], nn.Module]:
    tensors, meta = read_pooling(spec_file)
    at = meta.get("at", "input")
    fitted = meta.get("site")
    if fitted and fitted != site.path:
        raise BadInputError(f"{spec_file} was fitted at site {fitted}, not {site.path}; swap it at {fitted} or fit one for {site.path}")
    if at == "output":
        raise BadInputError(f"{spec_file} pools the output of {site.path}, which would change the grid after it; "
                            "fit with --at input (replace the site) or --at destrided (strided conv at stride 1 + pooling)")
    if at == "destrided" and not is_strided_conv(old):
        raise BadInputError(f"{spec_file} was fitted --at destrided, but {site.path} is not a strided conv")
    grid = list(meta["in_grid"])
    if at == "input" and site.in_shape and site.in_shape[1:] != grid:
        raise BadInputError(f"{spec_file} was fitted for a {grid[0]}×{grid[1]} grid but {site.path} sees "
                            f"{site.in_shape[1]}×{site.in_shape[2]}; fit it on this model (and input size) at {site.path}")
    module = LearnedLinearPool.from_tensors(tensors, meta, trainable=trainable)
    return {"op": "learned", "params": module.spec_params(), "mode": "destride" if at == "destrided" else "replace"}, module


def _shape_hint(record: dict[str, Any], site: Site, before: list[int], after: list[int]) -> str:
    if record["op"] == "learned" and record["mode"] == "replace" and before and after and before[1:] == after[1:]:
        c_in, c_out = site.in_shape[0] if site.in_shape else None, before[0]
        if c_in and c_out % c_in == 0:
            return f"; fit with --eigvecs {c_out // c_in} so that k·{c_in} = {c_out} channels"
        return f"; {c_out} output channels are not a multiple of the {c_in} input channels: fit --at destrided instead"
    return "; pick an operator that keeps the channels, or set its kernel/stride (see 'poolcli inspect')"


class _Mismatch(Exception):
    def __init__(self, path: str, shape: list[int]):
        super().__init__(path)
        self.path, self.shape = path, shape


def _site_outputs(model: nn.Module, paths: list[str], input_size: tuple[int, int, int],
                  expect: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Output shape ([C, H, W]) of each site on a zeros batch; with ``expect``, stop at the first site that
    differs (raising _Mismatch) before a later layer fails on it."""
    shapes: dict[str, list[int]] = {}
    handles = []
    for path in paths:
        def hook(_m, _a, out, path=path):
            shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else []
            shapes.setdefault(path, shape)
            if expect is not None and expect.get(path) != shape:
                raise _Mismatch(path, shape)
        handles.append(get_submodule(model, path).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros(2, *input_size, device=param.device if param is not None else "cpu",
                        dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def convert(bundle: ModelBundle, swaps: list[tuple[str, str]], trainable: bool = False,
            report: SiteReport | None = None, seed: int = 0) -> tuple[ModelBundle, list[SwapResult]]:
    """A new bundle with ``swaps`` (``[(site, op_spec), ...]``) applied; ``bundle`` is left untouched.

    New operators' random initialisation (P-pooling's side branch, GSP's projection) is drawn from ``seed``.
    """
    if not swaps:
        raise BadInputError("nothing to convert: give at least one --swap SITE=OP")
    seed_everything(seed)
    report = report or discover_sites(bundle.module, bundle.input_size)
    module = copy.deepcopy(bundle.module)
    records, results, sites = [], [], {}
    for site_text, spec in swaps:
        site = report.resolve(site_text, module)
        if site.path in sites:
            raise BadInputError(f"site {site.path} is swapped twice; give one --swap per site")
        sites[site.path] = site
        if site.swappable_by != "module" or "::" in site.path:
            raise BadInputError(f"site {site.path} is a functional call ({site.op}), not a module; convert swaps module sites "
                                "(see 'poolcli inspect')")
        old = get_submodule(module, site.path)
        name, params = parse_op_spec(spec)
        source = None
        if name == "learned" and "file" in params:
            source = str(params.pop("file"))
            want_trainable = bool(params.pop("trainable", trainable))
            if params:
                raise BadInputError(f"bad --swap '{spec}': learned:FILE takes only trainable=true|false")
            record, pool = _learned_swap(source, site, old, want_trainable)
        else:
            if takes_channels(name) and "channels" not in params and site.out_shape:
                # the channels the pool sees: the site's output (a destrided conv keeps them; a pool keeps them)
                params = {**params, "channels": int(site.out_shape[0])}
            record = {"op": name, "params": params, "mode": "destride" if is_strided_conv(old) else "replace"}
            pool = build_op(name, dict(params), replaced=old)
        if len(site.out_shape) == 1:  # a head pool that also flattened (timm's SelectAdaptivePool2d): keep doing so
            record["flatten"] = True
        new = build_swap(old, pool, record["mode"], record.get("flatten", False))
        record = {"site": site.path, **record, **({"source": Path(source).name} if source else {})}
        set_submodule(module, site.path, new)
        records.append(record)
        results.append(SwapResult(site=site.path, alias=site.alias, kind=site.kind, old=type(old).__name__,
                                  new=" → ".join(type(m).__name__ for m in (new if isinstance(new, nn.Sequential) else [new])),
                                  mode=record["mode"], shape=[], params_before=_params(old), params_after=_params(new),
                                  source=source))
    paths = list(sites)
    before = _site_outputs(bundle.module, paths, bundle.input_size)
    try:
        after = _site_outputs(module, paths, bundle.input_size, expect=before)
    except _Mismatch as m:
        rec = next(r for r in records if r["site"] == m.path)
        b = before[m.path]
        raise BadInputError(f"{rec['op']} at {m.path} gives {'×'.join(map(str, m.shape))} but the model needs "
                            f"{'×'.join(map(str, b))} there" + _shape_hint(rec, sites[m.path], b, m.shape)) from None
    except (RuntimeError, ValueError) as e:
        raise BadInputError(f"the converted model does not run: {str(e).splitlines()[0]}; check the swaps' shapes with 'poolcli inspect'") from None
    for rec, res in zip(records, results):
        res.shape = after.get(rec["site"], [])
    new_bundle = dataclasses.replace(bundle, module=module, swaps=[*bundle.swaps, *records])
    return new_bundle, results
