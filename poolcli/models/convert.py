"""Swap pooling at sites and stages: ``@down2=ppool``, ``@down*=blur``, ``@down2-4=avg``, ``@global=gem:p=3``,
``@down3=learned:pool.safetensors``, or a module path / functional call from ``poolcli inspect``.

``@downK`` means the whole **stage**: every strided site that maps the stage's input grid to its output
grid (a ResNet block's strided 3×3 and its strided 1×1 shortcut, an Inception reduction's strided convs
and its max pool) is rewritten together, so the stage's whole output is pooled by the new operator. Two
recipes (``recipe=``):

* ``after`` (default; the BlurPool recipe, Zhang 2019): each strided conv runs at stride 1 with its own
  padding and is followed by the operator with a centred odd window ≥ the stride (3 for stride 2); each
  pool is replaced by the operator with the pool's window (and its ceil mode). More MACs: the convs run
  at every input position.
* ``first`` (seed 002's ResNet recipe: "remove the strides in res3a … insert pooling after res2c"): the
  operator pools the stage's input once, and every strided conv of the stage runs at stride 1 with SAME
  padding, every pool of it becomes the identity. The same MACs as the original network (plus the pool).

Learned pooling (seed 001, ``learned:FILE`` fitted ``--at input``) *replaces* the conv it was fitted at
(P maps its C input channels to k·C outputs); the stage's other branches (a shortcut) pool their input with
the learned top map (rows scaled to sum 1, ``learned_map``) and run at stride 1. Fitted ``--at destrided``,
it follows the conv at stride 1, and the other branches are treated the same way.

Windows are chosen so that the output grid equals the original at every input size (``grid`` module); an
explicit ``kernel=``/``stride=``/``padding=`` wins. Afterwards the model runs once: every rewritten site must
give the shape it gave before, no strided site of a swapped stage may be left, and every new operator with
parameters must receive a gradient (a swap that cannot change the function is refused).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError, RunError
from ..io.poolfile import read_pooling
from ..ops.learned import LearnedLinearPool, LearnedMapPool
from ..ops.registry import (
    build_op,
    is_windowed,
    parse_op_spec,
    takes_ceil_mode,
    takes_channels,
    validate_params,
)
from ..runtime import seed_everything
from . import fxsites
from .bundle import ModelBundle
from .grid import GridRule, after_window, pair, rule_of, rule_of_call, window_area
from .sites import Site, SiteReport, discover_sites, is_channels_last_pool, is_strided_conv
from .surgery import ITERATING_CONTAINERS, apply_record, get_submodule

RECIPES = ("after", "first")
_WINDOW_KEYS = ("kernel", "stride", "padding")


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
    recipe: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_swap(text: str) -> tuple[str, str]:
    """``@down3=learned:pool.safetensors`` → ("@down3", "learned:pool.safetensors")."""
    site, eq, spec = text.partition("=")
    if not eq or not site.strip() or not spec.strip():
        raise BadInputError(
            f"bad --swap '{text}': write SITE=OP, e.g. @down3=learned:pool.safetensors or @global=gem:p=3"
        )
    return site.strip(), spec.strip()


def expand_sites(text: str, report: SiteReport) -> list[str]:
    """``@down*`` → every stage; ``@down2-4`` → @down2, @down3, @down4; anything else unchanged."""
    stages = sorted((int(k[len("@down") :]) for k in report.stages), key=int)
    if text == "@down*":
        if not stages:
            raise BadInputError("this model has no downsampling stage at this input size; see 'poolcli inspect'")
        return [f"@down{k}" for k in stages]
    m = re.fullmatch(r"@down(\d+)-(\d+)", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        missing = [k for k in range(lo, hi + 1) if k not in stages]
        if lo > hi or missing:
            have = f"@down1-{max(stages)}" if stages else "none"
            raise BadInputError(
                f"bad site range '{text}': this model has stages {have} at this input size; see 'poolcli inspect'"
            )
        return [f"@down{k}" for k in range(lo, hi + 1)]
    return [text]


def _params(m: nn.Module | None) -> int:
    return sum(p.numel() for p in m.parameters()) if m is not None else 0


def _lca(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _module_path(site_path: str) -> str:
    return fxsites.split_site(site_path)[0] if "::" in site_path else site_path


def _io_shapes(
    model: nn.Module, paths: list[str], input_size: tuple[int, int, int], expect: dict[str, list[int]] | None = None
) -> dict[str, tuple[list[int], list[int]]]:
    """(input [C,H,W], output shape) of each module path on one zeros batch (first call). Paths that no longer
    resolve (inside a container that a pool-first rewrite wrapped: its block is checked instead) are skipped.
    With ``expect``, stop at the first path whose output differs (raising _Mismatch) before a later layer fails."""
    seen: dict[str, tuple[list[int], list[int]]] = {}
    handles = []
    for path in set(paths):

        def hook(_m, args, out, path=path):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else []
            seen.setdefault(path, (list(x.shape[1:]) if x is not None else [], shape))
            if expect is not None and path in expect and expect[path] != shape:
                raise _Mismatch(path, shape)

        try:
            target = model.get_submodule(path) if path else model
        except AttributeError:
            continue
        handles.append(target.register_forward_hook(hook))
    try:
        _run(model, input_size)
    finally:
        for h in handles:
            h.remove()
    return seen


def _example(model: nn.Module, input_size: tuple[int, int, int], batch: int = 2, random: bool = False) -> torch.Tensor:
    param = next(model.parameters(), None)
    kw = {
        "device": param.device if param is not None else "cpu",
        "dtype": param.dtype if param is not None and param.is_floating_point() else torch.float32,
    }
    if random:
        return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0)).to(**kw)
    return torch.zeros(batch, *input_size, **kw)


def _run(model: nn.Module, input_size: tuple[int, int, int]) -> Any:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(_example(model, input_size))
    finally:
        model.train(was)


@dataclasses.dataclass
class _Plan:
    """One rewrite: a swap record plus the operator that goes with it."""

    record: dict[str, Any]
    op: nn.Module | None
    site: Site | None
    alias: str | None
    source: str | None = None


def _rule(site: Site, module: nn.Module, call: tuple[str, tuple, dict] | None = None) -> GridRule | None:
    """The site's grid rule; ``call``: a functional site's (name, args, kwargs) when already traced."""
    if "::" in site.path:
        return rule_of_call(*(call or fxsites.call_arguments(site.path, module)))
    return rule_of(get_submodule(module, site.path))


def _window_params(
    name: str, params: dict[str, Any], rule: GridRule | None, where: str, record: dict[str, Any]
) -> dict[str, Any]:
    """Fill kernel/stride/padding (and ceil mode or a run-time pad) so that a windowed operator keeps the grid.
    ``where``: "after" (follows a stride-1 conv), "before" (pools the site's input), or "pool" (replaces a pool)."""
    if not is_windowed(name) or rule is None:
        return params
    if any(k in params for k in _WINDOW_KEYS):
        return params  # the user's explicit window wins (the shape check reports a mismatch)
    if where == "after":
        w, q = after_window(rule.stride)
    elif rule.kind == "floor" or (rule.kind == "same" and where == "before"):
        w, q = rule.before_window() if where == "before" else (rule.kernel, rule.padding)
    else:  # a ceil-mode or SAME pool replaced in place
        w, q = rule.kernel, (0, 0) if rule.kind == "same" else rule.padding
        if rule.kind == "ceil" and takes_ceil_mode(name):
            params = {**params, "ceil_mode": True}
        else:
            record["pad"] = {
                "kind": rule.kind,
                "kernel": list(rule.kernel),
                "stride": list(rule.stride),
                "padding": list(rule.padding),
            }
            q = (0, 0)
    if any(2 * qq > ww for qq, ww in zip(q, w)):  # PyTorch pools allow padding ≤ kernel/2: pad at run time instead
        record["pad"] = {"kind": rule.kind, "kernel": list(w), "stride": list(rule.stride), "padding": list(q)}
        q = (0, 0)
    return {**params, "kernel": list(w), "stride": list(rule.stride), "padding": list(q)}


def _check_window(name: str, params: dict[str, Any], path: str, rule: GridRule | None) -> None:
    stride = params.get("stride", rule.stride if rule is not None else 1)  # a stride left out is the site's
    if is_windowed(name) and "kernel" in params and window_area(params["kernel"]) == 1 and max(pair(stride)) > 1:
        raise BadInputError(
            f"{name} with a 1×1 window at {path} only subsamples, as the strided site already does: the "
            "swap would not change the function; drop kernel= (convert picks a grid-keeping window) or give kernel≥2"
        )


class _Builder:
    def __init__(
        self, module: nn.Module, report: SiteReport, input_size: tuple[int, int, int], trainable: bool, recipe: str
    ):
        if recipe not in RECIPES:
            raise BadInputError(
                f"unknown recipe '{recipe}': use 'after' (pool after each strided conv) or 'first' "
                "(pool the stage's input, convs at stride 1)"
            )
        self.module, self.report, self.input_size, self.trainable, self.recipe = (
            module,
            report,
            input_size,
            trainable,
            recipe,
        )
        self.plans: list[_Plan] = []
        self.taken: set[str] = set()

    # -- one (site or alias, operator) pair -------------------------------------------------------------
    def add(self, site_text: str, spec: str) -> None:
        name, params = parse_op_spec(spec)
        params = validate_params(name, params)  # typed and range-checked before any grid arithmetic
        if site_text.startswith("@down"):
            site = self.report.resolve(site_text, self.module)  # unknown aliases fail here, listing the known ones
            sites = [s for s in self.report.sites if s.stage == site.stage and s.role == "downsample"]
        else:
            sites = [self.report.resolve(site_text, self.module)]
        for s in sites:
            if s.path in self.taken:
                raise BadInputError(f"site {s.path} is swapped twice; give one --swap per site or stage")
            self.taken.add(s.path)
        alias = site_text if site_text.startswith("@") else None
        if name == "learned" and "file" in params:
            self._learned(sites, params, alias, spec)
        elif len(sites) > 1 and self.recipe == "first":
            self._first(sites, name, params, alias)
        else:
            for s in sites:
                self._one(s, name, params, alias, "first" if self.recipe == "first" else "after")

    def _one(self, site: Site, name: str, params: dict[str, Any], alias: str | None, recipe: str) -> None:
        path = site.path
        functional = "::" in path
        old = None if functional else get_submodule(self.module, path)
        if functional and site.swappable_by != "fx":
            raise BadInputError(
                f"the functional call at {path} cannot be swapped: its module's forward does not trace "
                "with torch.fx; swap a module site instead (see 'poolcli inspect')"
            )
        call = fxsites.call_arguments(path, self.module) if functional else None  # one trace for rule and stand-in
        rule = _rule(site, self.module, call) if site.role == "downsample" else None
        conv = old is not None and is_strided_conv(old)
        record: dict[str, Any] = {"site": path, "op": name}
        if conv:
            mode, where = ("before", "before") if recipe == "first" else ("destride", "after")
        else:
            mode, where = "replace", "pool"
        params = dict(params)
        if takes_channels(name) and "channels" not in params:
            c = (
                site.in_shape[0]
                if (mode == "before" and site.in_shape)
                else (site.out_shape[0] if site.out_shape else None)
            )
            if c is not None:
                params["channels"] = int(c)
        params = _window_params(name, params, rule, where, record)
        _check_window(name, params, path, rule)
        record.update(params=params, mode=mode)
        if len(site.out_shape) == 1:
            record["flatten"] = True
        if old is not None and is_channels_last_pool(old):
            record["nhwc"] = True
        if functional and site.is_global:
            record["global"] = True
        replaced = fxsites.stand_in(*call) if call else old
        op = build_op(name, dict(params), replaced=replaced)
        record["recipe"] = recipe if site.role == "downsample" else None
        self.plans.append(_Plan(record, op, site, alias))

    def _first(self, sites: list[Site], name: str, params: dict[str, Any], alias: str | None) -> None:
        """Pool the stage's input once (at the sites' common ancestor), strided convs at stride 1, pools → identity."""
        paths = [_module_path(s.path) for s in sites]
        block = _lca(paths)
        key = (sites[0].in_shape[1:], list(sites[0].out_hw))
        shapes = _io_shapes(self.module, [block], self.input_size).get(block)
        if not shapes or shapes[0][1:] != key[0] or shapes[1][1:] != key[1]:
            where = block or "the whole model"
            raise BadInputError(
                f"recipe 'first' needs one module whose input is the stage's input: the sites of {alias} "
                f"({', '.join(s.path for s in sites)}) meet only at {where}; use --recipe after"
            )
        primary = max(sites, key=lambda s: window_area(s.kernel or [1, 1]))
        rule = _rule(primary, self.module)
        for s in sites:
            functional = "::" in s.path
            old = None if functional else get_submodule(self.module, s.path)
            mode = "stride1" if old is not None and is_strided_conv(old) else "identity"
            self.plans.append(_Plan({"site": s.path, "mode": mode, "recipe": "first"}, None, s, alias))
        record: dict[str, Any] = {"site": block, "op": name, "mode": "before", "recipe": "first"}
        params = dict(params)
        if takes_channels(name) and "channels" not in params:
            params["channels"] = int(shapes[0][0])
        params = _window_params(name, params, rule, "before", record)
        _check_window(name, params, block, rule)
        record["params"] = params
        op = build_op(name, dict(params), replaced=None)
        self.plans.append(_Plan(record, op, None, alias))

    def _learned(self, sites: list[Site], params: dict[str, Any], alias: str | None, spec: str) -> None:
        source = str(params.pop("file"))
        want_trainable = bool(params.pop("trainable", self.trainable))
        if params:
            raise BadInputError(f"bad --swap '{spec}': learned:FILE takes only trainable=true|false")
        tensors, meta = read_pooling(source)
        at, fitted = meta.get("at", "input"), meta.get("site")
        target = (
            next((s for s in sites if s.path == fitted), None) if fitted else (sites[0] if len(sites) == 1 else None)
        )
        if target is None:
            where = ", ".join(s.path for s in sites)
            raise BadInputError(
                f"{source} was fitted at site {fitted}, not at {where}; swap it at {fitted} or fit one for "
                f"{sites[0].path}"
            )
        old = get_submodule(self.module, target.path) if "::" not in target.path else None
        if at == "output":
            raise BadInputError(
                f"{source} pools the output of {target.path}, which would change the grid after it; "
                "fit with --at input (replace the site) or --at destrided (strided conv at stride 1 + pooling)"
            )
        if at == "destrided" and not (old is not None and is_strided_conv(old)):
            raise BadInputError(f"{source} was fitted --at destrided, but {target.path} is not a strided conv")
        grid = list(meta["in_grid"])
        if at == "input" and target.in_shape and target.in_shape[1:] != grid:
            raise BadInputError(
                f"{source} was fitted for a {grid[0]}×{grid[1]} grid but {target.path} sees "
                f"{target.in_shape[1]}×{target.in_shape[2]}; fit it on this model (and input size) at {target.path}"
            )
        pool = LearnedLinearPool.from_tensors(tensors, meta, trainable=want_trainable)
        record = {
            "site": target.path,
            "op": "learned",
            "params": pool.spec_params(),
            "mode": "destride" if at == "destrided" else "replace",
            "source": Path(source).name,
            "recipe": "learned",
        }
        self.plans.append(_Plan(record, pool, target, alias, source=source))
        for s in sites:
            if s is target:
                continue
            if s.in_shape[1:] != grid and at == "input":
                raise BadInputError(
                    f"{s.path} (same stage as {target.path}) sees a {s.in_shape[1]}×{s.in_shape[2]} grid, not the "
                    f"{grid[0]}×{grid[1]} the learned pooling was fitted on; swap {target.path} alone by its path"
                )
            mp = LearnedMapPool.from_learned(pool)
            mode = "before" if "::" not in s.path and is_strided_conv(get_submodule(self.module, s.path)) else "replace"
            rec = {"site": s.path, "op": "learned_map", "params": mp.spec_params(), "mode": mode, "recipe": "learned"}
            self.plans.append(_Plan(rec, mp, s, alias, source=source))


def _shape_hint(record: dict[str, Any], site: Site | None, before: list[int], after: list[int]) -> str:
    if (
        record.get("op") == "learned"
        and record["mode"] == "replace"
        and before
        and after
        and before[1:] == after[1:]
        and site
    ):
        c_in, c_out = site.in_shape[0] if site.in_shape else None, before[0]
        if c_in and c_out % c_in == 0:
            return f"; fit with --eigvecs {c_out // c_in} so that k·{c_in} = {c_out} channels"
        return f"; {c_out} output channels are not a multiple of the {c_in} input channels: fit --at destrided instead"
    if before and after and before[0] == after[0] and before[1:] != after[1:]:
        if any(k in record.get("params", {}) for k in _WINDOW_KEYS) and is_windowed(record.get("op", "")):
            return "; the grid differs: drop kernel=/stride=/padding= so that convert picks a grid-keeping window"
        if record.get("op") in ("learned", "learned_map"):
            return (
                f"; the pooling file maps to a {after[1]}×{after[2]} grid but the site's output is "
                f"{before[1]}×{before[2]}: refit it for this site with fit-pooling (without --stride, or with the "
                "site's stride)"
            )
        if not is_windowed(record.get("op", "")):
            return (
                f"; {record.get('op')} is a global pool: at a downsampling site use avg, max, ppool, softpool, lp "
                "or blur"
            )
        return "; the grid differs (see 'poolcli inspect' for the site's kernel/stride)"
    if before and after and before[0] != after[0]:
        return (
            f"; the channels differ ({after[0]} vs {before[0]}): set dim={before[0]} or channels={before[0]} on "
            "the operator"
        )
    return ""


class _Mismatch(Exception):
    def __init__(self, path: str, shape: list[int]):
        super().__init__(path)
        self.path, self.shape = path, shape


def _site_outputs(
    model: nn.Module, paths: list[str], input_size: tuple[int, int, int], expect: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Output shape ([C, H, W]) of each module path (see :func:`_io_shapes`)."""
    return {p: out for p, (_, out) in _io_shapes(model, paths, input_size, expect).items()}


def _check_gradients(model: nn.Module, ops: list[tuple[str, nn.Module]], input_size: tuple[int, int, int]) -> None:
    """Backward must run through the converted model (an operator broken by an in-place consumer fails here,
    not in finetune), and every new operator with trainable parameters must be able to change its own output
    on the input it receives (its parameters get a non-zero gradient from a random cotangent): a swap that
    cannot change the function is refused. The check is local to each operator, because a randomly
    initialised network may zero a whole branch downstream (timm's zero-initialised last BN of a block)."""
    inputs: dict[int, tuple[torch.Size, torch.dtype, torch.device]] = {}  # what each operator receives

    def record(mod: nn.Module, args: tuple) -> None:  # returns None: the operator's input is left as it is
        inputs.setdefault(id(mod), (args[0].shape, args[0].dtype, args[0].device))

    handles = [m.register_forward_pre_hook(record) for _, m in ops]
    was = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        out = model(_example(model, input_size, random=True))
        out = (
            out
            if isinstance(out, torch.Tensor)
            else next(t for t in (out.values() if isinstance(out, dict) else out) if isinstance(t, torch.Tensor))
        )
        (out.float() * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    except RuntimeError as e:
        raise RunError(
            f"the converted model fails in backward ({str(e).strip().splitlines()[0][:200]}); report it with the "
            "model and --swap, and use another operator meanwhile"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    gen = torch.Generator().manual_seed(1)
    for path, m in ops:
        params = [q for q in m.parameters() if q.requires_grad]
        seen = inputs.get(id(m))
        if not params or seen is None:
            continue
        shape, dtype, device = seen
        was = m.training
        m.eval()
        try:  # a standard-normal input of the same shape: random-init activations can saturate an operator
            y = m(torch.randn(shape, generator=gen).to(device, dtype))
            y = y if isinstance(y, torch.Tensor) else y[0]
            cot = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
            grads = torch.autograd.grad((y * cot).sum(), params, allow_unused=True)
        finally:
            m.train(was)
        if not any(g is not None and bool(g.abs().sum() > 0) for g in grads):
            why = (
                " (it sees a 1×1 map at this input size: give a larger --input-size)"
                if len(shape) == 4 and tuple(shape[-2:]) == (1, 1)
                else ""
            )
            raise BadInputError(
                f"the operator swapped in at {path} gets no gradient: it cannot change what the model "
                f"computes there{why}; choose another site or operator"
            )


def _notes(name: str, op: nn.Module | None) -> str:
    if name == "gsp" and op is not None and not bool(getattr(op, "initialized", torch.tensor(True))):
        return (
            "GSP is global average pooling until its prototypes are set: by finetune after 1024 training images, "
            "or now with convert --init-data"
        )
    return ""


def convert(
    bundle: ModelBundle,
    swaps: list[tuple[str, str]],
    trainable: bool = False,
    report: SiteReport | None = None,
    seed: int = 0,
    recipe: str = "after",
) -> tuple[ModelBundle, list[SwapResult]]:
    """A new bundle with ``swaps`` (``[(site or alias, op_spec), ...]``) applied; ``bundle`` is left untouched.

    New operators' random initialisation (P-pooling's side branch, GSP's projection) is drawn from ``seed``.
    """
    if not swaps:
        raise BadInputError("nothing to convert: give at least one --swap SITE=OP")
    seed_everything(seed)
    report = report or discover_sites(bundle.module, bundle.input_size)
    module = copy.deepcopy(bundle.module)
    builder = _Builder(module, report, bundle.input_size, trainable, recipe)
    for site_text, spec in swaps:
        for one in expand_sites(site_text, report):
            builder.add(one, spec)
    checked = [p.record["site"] for p in builder.plans if "::" not in p.record["site"]]
    wrapped = [
        p.record["site"] + "."
        for p in builder.plans
        if p.record["mode"] == "before"
        and "::" not in p.record["site"]
        and isinstance(module.get_submodule(p.record["site"]), ITERATING_CONTAINERS)
    ]
    checked = sorted(c for c in set(checked) if not any(c.startswith(w) for w in wrapped))
    before = _site_outputs(bundle.module, checked, bundle.input_size)
    results, new_ops = [], []
    for plan in builder.plans:
        old_path = _module_path(plan.record["site"])
        old = module.get_submodule(old_path) if "::" not in plan.record["site"] else None
        p_before = _params(old)
        new = apply_record(module, plan.record, plan.op)
        if plan.op is not None:
            new_ops.append((plan.record["site"], plan.op))
        try:
            now = module.get_submodule(old_path) if "::" not in plan.record["site"] else new
        except AttributeError:  # moved into the Sequential that pool-first wrapped around its container
            now = new
        if isinstance(now, nn.Sequential):
            desc, p_after = " → ".join(type(m).__name__ for m in now), _params(now)
        elif plan.record["mode"] == "before" and old is not None:  # a block that pools its input by a pre-hook
            desc, p_after = f"{type(plan.op).__name__} → {type(now).__name__}", p_before + _params(plan.op)
        else:
            desc, p_after = type(now).__name__, _params(now)
        site = plan.site
        results.append(
            SwapResult(
                site=plan.record["site"],
                alias=plan.alias,
                kind=site.kind if site else "stage-input",
                old=type(old).__name__ if old is not None else (site.op if site else "-"),
                new=desc,
                mode=plan.record["mode"],
                shape=[],
                params_before=p_before,
                params_after=p_after,
                source=plan.source,
                recipe=plan.record.get("recipe"),
                note=_notes(plan.record.get("op", ""), plan.op),
            )
        )
    try:
        after = _site_outputs(module, checked, bundle.input_size, expect=before)
    except _Mismatch as m:
        plan = next(p for p in builder.plans if p.record["site"] == m.path)
        b = before[m.path]
        raise BadInputError(
            f"{plan.record.get('op', plan.record['mode'])} at {m.path} gives {'×'.join(map(str, m.shape))} but the "
            f"model needs {'×'.join(map(str, b))} there" + _shape_hint(plan.record, plan.site, b, m.shape)
        ) from None
    except (RuntimeError, ValueError, AssertionError) as e:
        raise BadInputError(
            f"the converted model does not run: {str(e).strip().splitlines()[0][:200]}; check the swaps' "
            "shapes with 'poolcli inspect'"
        ) from None
    _check_stages(module, report, builder, bundle.input_size)
    _check_gradients(module, new_ops, bundle.input_size)
    for res in results:
        res.shape = after.get(_module_path(res.site), []) if "::" not in res.site else []
    records = [{k: v for k, v in p.record.items() if v is not None} for p in builder.plans]
    new_bundle = dataclasses.replace(bundle, module=module, swaps=[*bundle.swaps, *records])
    return new_bundle, results


def _check_stages(module: nn.Module, report: SiteReport, builder: _Builder, input_size: tuple[int, int, int]) -> None:
    """No strided conv may remain in a stage that was swapped as a whole (that would be a silent no-op there)."""
    swapped = {p.alias for p in builder.plans if p.alias and p.alias.startswith("@down")}
    if not swapped:
        return
    keys = {}
    for alias in swapped:
        s = next(x for x in report.sites if x.alias == alias)
        keys[(tuple(s.in_shape[1:]), tuple(s.out_hw))] = alias
    new_report = discover_sites(module, input_size)
    for s in new_report.sites:
        key = (tuple(s.in_shape[1:]), tuple(s.out_hw))
        if s.kind == "strided-conv" and key in keys:
            raise RunError(
                f"after the swap at {keys[key]}, {s.path} still downsamples by a strided conv; report it with the "
                "model "
                "name, and swap that site by its path meanwhile"
            )
