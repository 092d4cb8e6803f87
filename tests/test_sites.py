"""Site discovery on the model families the README promises, and on the fixtures."""

from __future__ import annotations

import pytest

from poolcli.models.sites import discover_sites
from poolcli.models.spec import build_model

from .conftest import CNN, RESNET

# spec -> (@global path, number of @down stages, first few @down primaries, SE-style internal pools expected)
CASES = {
    "tv:resnet18": ("avgpool", 5, ["conv1", "maxpool", "layer2.0.conv1"], False),
    "tv:resnet50": ("avgpool", 5, ["conv1", "maxpool", "layer2.0.conv2"], False),
    "tv:vgg16_bn": (None, 5, ["features.6", "features.13"], False),
    "tv:mobilenet_v2": ("<model>::adaptive_avg_pool2d", 5, ["features.0.0", "features.2.conv.1.0"], False),
    "tv:densenet121": (
        "<model>::adaptive_avg_pool2d",
        5,
        ["features.conv0", "features.pool0", "features.transition1.pool"],
        False,
    ),
    "tv:googlenet": ("avgpool", 5, ["conv1.conv", "maxpool1", "maxpool2"], False),
    "timm:resnet18": ("global_pool", 5, ["conv1", "maxpool", "layer2.0.conv1"], False),
    "timm:efficientnet_b0": ("global_pool", 5, ["conv_stem", "blocks.1.0.conv_dw"], True),
    "timm:convnext_tiny": ("head.global_pool", 4, ["stem.0", "stages.1.downsample.1"], False),
    "timm:regnety_002": ("head.global_pool", 5, ["stem.conv", "s1.b1.conv2.conv"], True),
    str(CNN): ("global_pool", 3, ["stage1.0", "stage2.0", "stage3.0"], False),
    str(RESNET): ("global_pool", 3, ["layers.1.conv1", "layers.2.conv1", "layers.3.conv1"], False),
}


@pytest.mark.parametrize("spec", list(CASES))
def test_sites(spec):
    glob, n_down, downs, has_se = CASES[spec]
    bundle = build_model(spec)
    report = discover_sites(bundle.module, bundle.input_size)
    aliases = report.aliases()
    assert aliases.get("@global") == glob
    assert len(report.stages) == n_down
    assert [aliases[f"@down{i + 1}"] for i in range(len(downs))] == downs
    internal = [s for s in report.sites if s.role == "internal-global"]
    assert bool(internal) == has_se
    assert all(s.alias != "@global" for s in internal)
    assert 0 < report.total_macs and all(0 <= s.macs <= report.total_macs for s in report.sites)
    # stages shrink the grid monotonically in forward order
    sizes = [report.resolve(f"@down{i}").in_shape[1] for i in range(1, n_down + 1)]
    assert sizes == sorted(sizes, reverse=True)


def test_resnet_stage_groups_strided_conv_and_shortcut():
    bundle = build_model("tv:resnet18")
    report = discover_sites(bundle.module, bundle.input_size)
    assert report.stages["@down3"] == ["layer2.0.conv1", "layer2.0.downsample.0"]
    assert report.resolve("@down3").kind == "strided-conv"


def test_googlenet_branch_pools_are_shape_preserving():
    bundle = build_model("tv:googlenet")
    report = discover_sites(bundle.module, bundle.input_size)
    branch = [s for s in report.sites if s.path.endswith("branch4.0")]
    assert branch and all(s.role == "shape-preserving" and s.alias is None for s in branch)


def test_functional_sites_are_marked_fx_when_traceable():
    for spec in ("tv:densenet121", "tv:mobilenet_v2"):
        bundle = build_model(spec)
        head = discover_sites(bundle.module, bundle.input_size).resolve("@global")
        assert head.kind == "functional-pool" and head.swappable_by == "fx"


def test_unused_pool_is_reported():
    from torch import nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d(1)  # defined, never called

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    report = discover_sites(M(), (3, 16, 16))
    assert report.unused_pools == ["avgpool"]
    assert report.aliases() == {"@global": "<model>::mean(2,3)", "@down1": "conv"}


def test_head_pool_stays_global_at_small_inputs():
    """At 32×32 a ResNet's last stage already ends at 1×1: the strided conv that gets there is a
    downsample stage, and the head pool (1×1 → 1×1) is still @global."""
    small, large = (
        discover_sites(b.module, b.input_size)
        for b in (build_model("timm:resnet18", input_size=size) for size in ("3x32x32", "3x64x64"))
    )
    assert small.aliases() == large.aliases() and small.aliases()["@global"] == "global_pool"
