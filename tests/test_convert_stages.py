"""convert on real architectures: stage swaps and both recipes, grid-keeping windows (proved over many
sizes), functional sites via torch.fx, in-place consumers, module versions, no silent no-ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poolcli.errors import BadInputError
from poolcli.io.poolfile import write_pooling
from poolcli.models.checkpoint import load_checkpoint, save_checkpoint
from poolcli.models.convert import convert, expand_sites
from poolcli.models.grid import PadTo, after_window, ceil_out, floor_out, rule_of
from poolcli.models.sites import discover_sites
from poolcli.models.spec import build_model
from poolcli.models.surgery import stride1_same
from poolcli.ops.learned import LearnedLinearPool
from poolcli.ops.registry import available, build_op

SIZES = range(1, 70)


def _x(size, n=2, seed=0):
    return torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))


def _reload_equal(new, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(new, None, path, verify=True)
    back = load_checkpoint(path)
    x = _x(new.input_size)
    with torch.no_grad():
        assert torch.equal(back.module(x), new.module.eval()(x))
    return back


# -- grid arithmetic, against PyTorch itself at every size --------------------------------------------------
@pytest.mark.parametrize(
    "k,s,p,d",
    [
        (3, 2, 1, 1),
        (1, 2, 0, 1),
        (7, 2, 3, 1),
        (3, 2, 0, 1),
        (2, 2, 0, 1),
        (4, 4, 0, 1),
        (5, 2, 2, 1),
        (3, 2, 2, 2),
        (11, 4, 2, 1),
        (16, 16, 0, 1),
        (3, 3, 0, 1),
        (4, 2, 1, 1),
    ],
)
def test_pool_after_a_stride1_conv_keeps_the_grid_at_every_size(k, s, p, d):
    conv = nn.Conv2d(1, 1, k, s, p, dilation=d)
    rule = rule_of(conv)
    w, q = after_window(rule.stride)
    for h in SIZES:
        if h + 2 * p < d * (k - 1) + 1:
            continue
        want = conv(torch.zeros(1, 1, h, h)).shape[-1]
        stride1 = nn.Conv2d(1, 1, k, 1, p, dilation=d)(torch.zeros(1, 1, h, h))
        got = nn.AvgPool2d(w, s, q)(stride1).shape[-1]
        assert got == want == rule.out(h, h)[0], (h, got, want)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (1, 2, 0), (3, 2, 0), (2, 2, 0), (4, 4, 0), (7, 2, 3), (3, 3, 1)])
def test_pool_first_window_keeps_the_grid_and_stride1_same_keeps_the_size(k, s, p):
    conv = nn.Conv2d(1, 1, k, s, p)
    rule = rule_of(conv)
    w, q = rule.before_window()
    same = stride1_same(conv)
    for h in SIZES:
        if h + 2 * p < k:
            continue
        want = conv(torch.zeros(1, 1, h, h)).shape[-1]
        pooled = nn.MaxPool2d(w, s, q)(torch.zeros(1, 1, h, h))
        assert pooled.shape[-1] == want, (h, pooled.shape, want)
        assert same(pooled).shape[-1] == pooled.shape[-1]


@pytest.mark.parametrize("k,s,p", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 3, 1)])
def test_ceil_and_same_rules_match_torch_and_timm(k, s, p):
    from timm.layers.pool2d_same import MaxPool2dSame

    ceil = nn.MaxPool2d(k, s, p, ceil_mode=True)
    same = MaxPool2dSame(k, s)
    for h in SIZES:
        if h + 2 * p < k:
            continue
        x = torch.zeros(1, 1, h, h)
        assert rule_of(ceil).out(h, h)[0] == ceil(x).shape[-1] == ceil_out(h, k, s, p)
        assert rule_of(same).out(h, h)[0] == same(x).shape[-1]
        # an operator without ceil_mode meets both through PadTo
        for rule, ref in ((rule_of(ceil), ceil), (rule_of(same), same)):
            op = PadTo(nn.AvgPool2d(k, s), (k, k), (s, s), rule)
            assert op(x).shape == ref(x).shape
    assert floor_out(7, 3, 2, 1) == 4


# -- stage swaps -------------------------------------------------------------------------------------------------
def test_stage_swap_rewrites_every_strided_site_of_a_regnet_stage(tmp_path):
    """torchvision RegNet runs the 1×1 projection before the 3×3: swapping only the first site of the stage was a
    silent no-op (a 1×1 'pool' at stride 2). The stage is now rewritten as a whole."""
    bundle = build_model("tv:regnet_x_400mf", input_size="3x64x64", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    stage = report.stages["@down2"]
    assert len(stage) == 2 and stage[0].endswith("proj.0")
    new, results = convert(bundle, [("@down2", "ppool")], report=report)
    assert {r.site for r in results} == set(stage) and all(r.mode == "destride" for r in results)
    for path in stage:
        pool = new.module.get_submodule(path)[1]
        assert pool.kernel_size == (3, 3) and pool.stride == (2, 2)  # never a 1×1 window
    grid = next(s for s in report.sites if s.path == stage[0])
    after = discover_sites(new.module, bundle.input_size)
    assert not [
        s
        for s in after.sites
        if s.kind == "strided-conv" and s.in_shape[1:] == grid.in_shape[1:] and list(s.out_hw) == list(grid.out_hw)
    ]
    _reload_equal(new, tmp_path)


def test_recipe_first_pools_the_block_input_once_with_the_original_macs(tmp_path):
    bundle = build_model("tv:resnet50", input_size="3x64x64", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    new, results = convert(bundle, [("@down3", "avg")], report=report, recipe="first")
    modes = {r.site: r.mode for r in results}
    assert modes == {"layer2.0.conv2": "stride1", "layer2.0.downsample.0": "stride1", "layer2.0": "before"}
    block = new.module.get_submodule("layer2.0")
    assert isinstance(block.poolcli_pre, nn.AvgPool2d) and block.conv2.stride == (1, 1)
    # no more MACs than the original network (a bottleneck's first 1×1 conv now runs on the pooled grid)
    macs_new = discover_sites(new.module, bundle.input_size).total_macs
    assert report.total_macs * 0.9 < macs_new <= report.total_macs
    after, _ = convert(bundle, [("@down3", "avg")], report=report)
    assert discover_sites(after.module, bundle.input_size).total_macs > report.total_macs * 1.1
    back = _reload_equal(new, tmp_path)
    assert back.swaps[-1]["recipe"] == "first"


def test_site_wildcards_and_ranges():
    bundle = build_model("tv:resnet18", input_size="3x64x64", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    assert expand_sites("@down*", report) == ["@down1", "@down2", "@down3", "@down4", "@down5"]
    assert expand_sites("@down2-4", report) == ["@down2", "@down3", "@down4"]
    with pytest.raises(BadInputError, match="stages @down1-5"):
        expand_sites("@down4-9", report)
    new, results = convert(bundle, [("@down2-3", "max")], report=report)
    assert [r.site for r in results] == ["maxpool", "layer2.0.conv1", "layer2.0.downsample.0"]


def test_patchify_and_unpadded_and_ceil_mode_sites_are_accepted(tmp_path):
    for spec, swap in (
        ("timm:convnext_atto", "@down1=ppool"),
        ("tv:alexnet", "@down1=blur"),
        ("tv:googlenet", "@down2=ppool"),
        ("tv:squeezenet1_0", "@down2=softpool"),
    ):
        bundle = build_model(spec, input_size="3x67x67", num_classes=10)
        new, results = convert(bundle, [tuple(swap.split("="))])
        assert results
        _reload_equal(new, tmp_path)
    # a ceil-mode max pool keeps ceil mode when the new operator has it (googlenet's maxpool1 at 67 px)
    bundle = build_model("tv:googlenet", input_size="3x67x67", num_classes=10)
    new, _ = convert(bundle, [("@down2", "max")])
    assert new.module.maxpool1.ceil_mode is True


def test_timm_same_padded_convs_and_pools(tmp_path):
    bundle = build_model("timm:tf_efficientnet_b0", input_size="3x63x63", num_classes=10)
    new, results = convert(bundle, [("@down*", "avg")])
    assert len(results) == 5
    _reload_equal(new, tmp_path)


def test_user_window_wins_and_mismatch_names_the_fix():
    bundle = build_model("tv:resnet18", input_size="3x64x64", num_classes=10)
    new, _ = convert(bundle, [("@down3", "max:kernel=3,stride=2,padding=1")])
    with pytest.raises(BadInputError, match="drop kernel=/stride=/padding="):
        convert(bundle, [("@down3", "max:kernel=2,stride=2")])
    with pytest.raises(BadInputError, match="only subsamples"):
        convert(bundle, [("@down3", "avg:kernel=1,stride=2")])
    with pytest.raises(BadInputError, match="global pool: at a downsampling site"):
        convert(bundle, [("layer2.0.conv1", "gem")])


def test_learned_pooling_replaces_the_conv_and_pools_the_shortcut_with_its_top_map(tmp_path):
    bundle = build_model("tv:resnet18", input_size="3x32x32", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    site = next(s for s in report.sites if s.alias == "@down3")  # layer2.0.conv1: 64×8×8 → 128×4×4
    avg = LearnedLinearPool.average(64, (8, 8), 2, 2)
    P = torch.cat([avg.P, avg.P * 0.5])
    f = tmp_path / "p.safetensors"
    write_pooling(
        f,
        {"P": P, "channel_mean": torch.zeros(64), "channel_scale": torch.ones(64)},
        {"site": site.path, "at": "input", "in_grid": [8, 8], "out_grid": [4, 4]},
    )
    new, results = convert(bundle, [("@down3", f"learned:{f}")], report=report)
    modes = {r.site: r.mode for r in results}
    assert modes == {"layer2.0.conv1": "replace", "layer2.0.downsample.0": "before"}
    shortcut = new.module.get_submodule("layer2.0.downsample.0")
    W = shortcut[0].W
    assert torch.allclose(W.sum(1), torch.ones(16)) and torch.allclose(W, avg.P[0])  # average pooling's top map
    # the shortcut now computes conv1×1(learned-map-pool(x)) = the old 1×1 conv applied to the 2×2 averages
    x = torch.randn(2, 64, 8, 8)
    old = bundle.module.get_submodule("layer2.0.downsample.0")
    with torch.no_grad():
        ref = torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), old.weight)
        assert torch.allclose(shortcut(x), ref, atol=1e-5)
    _reload_equal(new, tmp_path)


# -- functional sites ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["tv:mobilenet_v2", "tv:densenet121", "tv:mnasnet0_5", "tv:shufflenet_v2_x0_5"])
def test_functional_head_pools_are_swappable_and_replayed(spec, tmp_path):
    bundle = build_model(spec, input_size="3x64x64", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    head = next(s for s in report.sites if s.alias == "@global")
    assert "::" in head.path and head.swappable_by == "fx"
    for op in ("gsp:m=8", "gem"):
        new, (r,) = convert(bundle, [("@global", op)], report=report)
        assert r.site == head.path
        back = _reload_equal(new, tmp_path)
        assert type(back.module).__name__ == type(bundle.module).__name__  # methods and attributes kept
        assert set(bundle.module.state_dict()) < set(back.module.state_dict())


def test_inception_reduction_stage_includes_its_functional_max_pool(tmp_path):
    bundle = build_model("tv:inception_v3", input_size="3x96x96", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    stage = next(k for k, v in report.stages.items() if "Mixed_6a::max_pool2d" in v)
    for recipe in ("after", "first"):
        new, results = convert(bundle, [(stage, "ppool")], report=report, recipe=recipe)
        assert "Mixed_6a::max_pool2d" in {r.site for r in results}
        _reload_equal(new, tmp_path)


# -- training after a swap -------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["native", "torch"])
def test_no_operator_is_broken_by_an_in_place_consumer(impl, monkeypatch):
    from poolcli.ops import ppool

    if impl == "torch":
        monkeypatch.setattr(ppool, "_use_native", lambda x: False)
    elif ppool.native.load("ppool") is None:
        pytest.skip("no C compiler: the native P-pooling path is not built here")
    for name in available():
        if name in ("learned", "learned_map"):
            continue
        op = build_op(name, {"channels": 4} if name in ("ppool", "gsp", "blur") else {})
        if name == "gsp":
            op.init_prototypes(torch.randn(64, 4))
        x = torch.rand(2, 4, 8, 8, requires_grad=True)
        y = op(x)
        nn.functional.relu(y, inplace=True).sum().backward()  # an in-place consumer (NFNet, EfficientNet)
        assert x.grad is not None and torch.isfinite(x.grad).all(), name


def test_gsp_is_reported_as_gap_until_initialised_and_init_data_sets_it(tmp_path, cli):
    from .conftest import CNN

    fixture = build_model("poolcli:convnet4", num_classes=10)
    new, (r,) = convert(fixture, [("@global", "gsp:m=8")])
    assert "global average pooling until its prototypes are set" in r.note
    out = tmp_path / "g.safetensors"
    code, _, err = cli("convert", CNN, "--swap", "@global=gsp:m=8", "-o", out)
    assert code == 0 and "global average pooling until" in err
    code, _, err = cli(
        "convert", CNN, "--swap", "@global=gsp:m=8", "--init-data", "digits:train", "--init-images", "64", "-o", out
    )
    assert code == 0 and "initialised from 64 images" in err, err
    gsp = load_checkpoint(out).module.global_pool
    assert bool(gsp.initialized) and torch.isfinite(gsp.prototypes).all()
    code, _, err = cli(
        "convert", CNN, "--swap", "@global=gem", "--init-data", "digits:train", "-o", tmp_path / "n.safetensors"
    )
    assert code == 2 and "no gsp operator" in err and not (tmp_path / "n.safetensors").exists()


# -- checkpoints that reload -----------------------------------------------------------------------------------
def test_module_versions_survive_the_checkpoint(tmp_path):
    """torchvision MNASNet checks its state_dict version in _load_from_state_dict."""
    bundle = build_model("tv:mnasnet0_5", input_size="3x64x64", num_classes=10)
    new, _ = convert(bundle, [("@down2", "avg")])
    back = _reload_equal(new, tmp_path)
    assert back.module is not None


def test_convert_refuses_to_report_success_for_a_file_it_cannot_reload(tmp_path, monkeypatch, cli):
    from poolcli.models import checkpoint

    out = tmp_path / "x.safetensors"
    out.write_bytes(b"previous")

    def broken(path):
        raise BadInputError("simulated")

    monkeypatch.setattr(checkpoint, "load_checkpoint", broken)
    code, _, err = cli("convert", "tv:resnet18", "--input-size", "3x32x32", "--swap", "@down2=avg", "-o", out)
    assert code == 1 and "does not reload" in err and out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_vit_input_size_is_passed_to_timm_and_a_bad_one_is_exit_2(cli, tmp_path):
    bundle = build_model("timm:vit_tiny_patch16_224", input_size="3x64x64", num_classes=10)
    assert bundle.base["kwargs"]["img_size"] == [64, 64]
    assert discover_sites(bundle.module, bundle.input_size).stages
    code, _, err = cli("inspect", "timm:vit_tiny_patch16_224", "--input-size", "3x8x8")
    assert code == 2 and len(err.strip().splitlines()) == 1
