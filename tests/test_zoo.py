"""The model zoo: inspect → convert (every swap kind) → reload → forward → backward on timm and torchvision
architectures at small inputs (random weights). Slow: runs in .ci/run, not in `make test`.

A swap either converts — the file reloads strictly to the same outputs and trains (forward + backward) — or
is refused with exit 2 for one of the documented reasons (README, "What convert refuses").
"""

from __future__ import annotations

import pytest
import torch

from poolcli.errors import BadInputError
from poolcli.models.checkpoint import load_checkpoint, save_checkpoint
from poolcli.models.convert import convert
from poolcli.models.sites import discover_sites
from poolcli.models.spec import build_model

pytestmark = pytest.mark.slow

# (spec, input size): CNN families, hybrids and transformers
ZOO = [
    ("tv:resnet18", 64),
    ("tv:resnet50", 64),
    ("tv:resnext50_32x4d", 64),
    ("tv:wide_resnet50_2", 64),
    ("tv:regnet_x_400mf", 64),
    ("tv:regnet_y_400mf", 64),
    ("tv:convnext_tiny", 64),
    ("tv:efficientnet_b0", 64),
    ("tv:efficientnet_v2_s", 64),
    ("tv:mobilenet_v2", 64),
    ("tv:mobilenet_v3_small", 64),
    ("tv:mnasnet0_5", 64),
    ("tv:densenet121", 64),
    ("tv:vgg11", 64),
    ("tv:vgg11_bn", 64),
    ("tv:alexnet", 96),
    ("tv:squeezenet1_0", 96),
    ("tv:squeezenet1_1", 64),
    ("tv:shufflenet_v2_x0_5", 64),
    ("tv:googlenet", 64),
    ("tv:inception_v3", 139),
    ("tv:swin_t", 64),
    ("tv:vit_b_16", 64),
    ("timm:resnet18", 64),
    ("timm:resnet50d", 64),
    ("timm:resnext26ts", 64),
    ("timm:regnetx_002", 64),
    ("timm:regnety_002", 64),
    ("timm:convnext_atto", 64),
    ("timm:convnextv2_atto", 64),
    ("timm:efficientnet_b0", 64),
    ("timm:tf_efficientnet_b0", 64),
    ("timm:mobilenetv3_small_050", 64),
    ("timm:mobilenetv4_conv_small", 64),
    ("timm:densenet121", 64),
    ("timm:vgg11", 64),
    ("timm:inception_v3", 139),
    ("timm:repvgg_a0", 64),
    ("timm:mobileone_s0", 64),
    ("timm:fastvit_t8", 64),
    ("timm:dpn48b", 64),
    ("timm:ese_vovnet19b_dw", 64),
    ("timm:hrnet_w18_small", 64),
    ("timm:cspresnet50", 64),
    ("timm:darknet17", 64),
    ("timm:edgenext_xx_small", 64),
    ("timm:nfnet_l0", 64),
    ("timm:dla34", 64),
    ("timm:res2net50_26w_4s", 64),
    ("timm:mixnet_s", 64),
    ("timm:ghostnet_100", 64),
    ("timm:rexnet_100", 64),
    ("timm:poolformer_s12", 64),
    ("timm:xception41", 64),
    ("timm:gernet_s", 64),
    ("timm:cs3darknet_s", 64),
    ("timm:mobilevit_xxs", 64),
    ("timm:efficientvit_b0", 64),
    ("timm:coatnet_nano_rw_224", 64),
    ("timm:levit_128s", 64),
    ("timm:swin_tiny_patch4_window7_224", 64),
    ("timm:vit_tiny_patch16_224", 64),
    ("timm:deit_tiny_patch16_224", 64),
    ("timm:lcnet_050", 64),
    ("timm:hgnetv2_b0", 64),
    ("timm:skresnet18", 64),
    ("timm:selecsls42b", 128),
]

SWAPS = [
    ("@down*=ppool", "after"),
    ("@down*=ppool", "first"),
    ("@down*=avg", "after"),
    ("@down*=max", "after"),
    ("@down*=blur", "after"),
    ("@global=gsp:m=8", "after"),
    ("@global=gem", "after"),
]

# the documented refusals (exit 2): no global head pool (token pooling in transformers, AlexNet/VGG's
# 7×7/6×6 adaptive pools, LeViT), a head pool that sees a 1×1 map (timm's VGG pools after its 7×7 conv
# "pre-logits": GeM/GSP would be the identity there), and recipe 'first' where a stage's strided sites
# have no common module whose input is the stage's input (HRNet's fused branches, ...)
REFUSALS = (
    "unknown site alias '@global'",
    "recipe 'first' needs one module",
    "this model has no downsampling stage",
    "sees a 1×1 map at this input size",
)


def _train_step(module: torch.nn.Module, size: tuple[int, int, int]) -> None:
    module.train()
    out = module(torch.randn(2, *size, generator=torch.Generator().manual_seed(1)))
    out = out if isinstance(out, torch.Tensor) else out[0]
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()


@pytest.mark.parametrize("spec,size", ZOO, ids=[s for s, _ in ZOO])
def test_zoo_inspect_convert_reload_train(spec, size, tmp_path):
    torch.manual_seed(0)
    bundle = build_model(spec, input_size=f"3x{size}x{size}", num_classes=10)
    report = discover_sites(bundle.module, bundle.input_size)
    assert report.sites, f"{spec}: no site found"
    outcomes = {}
    for swap, recipe in SWAPS:
        site, op = swap.split("=", 1)
        try:
            new, results = convert(bundle, [(site, op)], report=report, recipe=recipe)
        except BadInputError as e:
            assert any(r in str(e) for r in REFUSALS), f"{spec} {swap} ({recipe}): {e}"
            outcomes[(swap, recipe)] = "refused"
            continue
        assert results
        path = tmp_path / "m.safetensors"
        save_checkpoint(new, None, path, verify=True)
        back = load_checkpoint(path)
        _train_step(back.module, bundle.input_size)
        outcomes[(swap, recipe)] = "ok"
    # every stage accepts every local operator the 'after' way; every head pool accepts gsp and gem
    head = next((s for s in report.sites if s.alias == "@global"), None)
    pooled_head = head is not None and len(head.in_shape) == 3 and head.in_shape[1] * head.in_shape[2] > 1
    must = [(s, r) for s, r in SWAPS if r == "after" and (s.startswith("@down") or pooled_head)]
    assert all(outcomes[k] == "ok" for k in must), outcomes
