"""convert: swaps at pool and strided-conv sites, shape checks, checkpoints that rebuild the same model."""

from __future__ import annotations

import json

import pytest
import torch

from poolcli.errors import BadInputError
from poolcli.io.poolfile import write_pooling
from poolcli.models.checkpoint import load_checkpoint, save_checkpoint
from poolcli.models.convert import convert, parse_swap
from poolcli.models.spec import build_model
from poolcli.ops.learned import LearnedLinearPool
from poolcli.ops.ppool import PPool2d

from .conftest import CNN, RESNET


def _pool_file(path, k=2, site="stage3.0", at="input", grid=(8, 8), channels=256):
    avg = LearnedLinearPool.average(channels, grid, 2, 2)
    P = avg.P.repeat(k, 1, 1) * torch.linspace(0.5, 1.5, k)[:, None, None]
    write_pooling(
        path,
        {"P": P, "channel_mean": torch.zeros(channels), "channel_scale": torch.ones(channels)},
        {"site": site, "at": at, "in_grid": list(grid), "out_grid": [grid[0] // 2, grid[1] // 2]},
    )
    return path


def _x(bundle, n=3):
    return torch.rand(n, *bundle.input_size, generator=torch.Generator().manual_seed(0))


def test_learned_replaces_strided_conv_and_round_trips(tmp_path):
    bundle = build_model(str(CNN))
    new, results = convert(bundle, [("@down3", f"learned:{_pool_file(tmp_path / 'p.safetensors')}")])
    (r,) = results
    assert (r.site, r.mode, r.old, r.new, r.shape) == (
        "stage3.0",
        "replace",
        "Conv2d",
        "LearnedLinearPool",
        [512, 4, 4],
    )
    assert isinstance(bundle.module.get_submodule("stage3.0"), torch.nn.Conv2d)  # the input bundle is untouched
    assert new.swaps[-1]["params"]["k"] == 2 and new.swaps[-1]["source"] == "p.safetensors"
    save_checkpoint(new, None, tmp_path / "out.safetensors")
    back = load_checkpoint(tmp_path / "out.safetensors")
    x = _x(bundle)
    with torch.no_grad():
        assert torch.equal(back.module(x), new.module.eval()(x))
    assert not any(n.endswith(".P") for n, _ in back.module.named_parameters())  # P fixed by default


def test_learned_fitted_destrided_follows_the_stride_1_conv(tmp_path):
    bundle = build_model(str(CNN))
    f = _pool_file(tmp_path / "d.safetensors", k=1, at="destrided", channels=512)
    new, (r,) = convert(bundle, [("@down3", f"learned:{f}")])
    assert (r.mode, r.new, r.shape) == ("destride", "Conv2d → LearnedLinearPool", [512, 4, 4])
    save_checkpoint(new, None, tmp_path / "out.safetensors")
    x = _x(bundle)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "out.safetensors").module(x), new.module.eval()(x))


@pytest.mark.parametrize(
    "spec,cls", [("ppool", PPool2d), ("max", torch.nn.MaxPool2d), ("blur", None), ("lp:p=3", None)]
)
def test_other_operators_destride_a_strided_conv(tmp_path, spec, cls):
    bundle = build_model(str(CNN))
    new, (r,) = convert(bundle, [("@down1", spec)])
    assert r.mode == "destride" and r.shape == [128, 16, 16]
    seq = new.module.get_submodule("stage1.0")
    assert seq[0].stride == (1, 1) and torch.equal(seq[0].weight, bundle.module.get_submodule("stage1.0").weight)
    if cls is not None:
        assert isinstance(seq[1], cls)
    save_checkpoint(new, None, tmp_path / "out.safetensors")
    back = load_checkpoint(tmp_path / "out.safetensors")
    x = _x(bundle)
    with torch.no_grad():
        assert torch.equal(back.module(x), new.module.eval()(x))


def test_global_and_pool_sites_are_replaced(tmp_path):
    bundle = build_model(str(RESNET))
    new, results = convert(bundle, [("@global", "gsp:m=8"), ("@down1", "softpool")])
    by_site = {r.alias: r for r in results}
    assert by_site["@global"].mode == "replace" and by_site["@global"].new == "GSP"
    assert new.swaps[0]["params"]["channels"] == by_site["@global"].shape[0]  # filled from the site's shape
    save_checkpoint(new, None, tmp_path / "out.safetensors")
    back = load_checkpoint(tmp_path / "out.safetensors")
    x = _x(bundle)
    with torch.no_grad():
        assert torch.allclose(back.module(x), new.module.eval()(x), atol=1e-6)


def test_trainable_learned_pooling(tmp_path):
    bundle = build_model(str(CNN))
    f = _pool_file(tmp_path / "p.safetensors")
    for spec, kw in ((f"learned:{f},trainable=true", {}), (f"learned:{f}", {"trainable": True})):
        new, _ = convert(bundle, [("@down3", spec)], **kw)
        assert isinstance(new.module.get_submodule("stage3.0").P, torch.nn.Parameter)


def test_bad_swaps_say_what_to_do(tmp_path):
    bundle = build_model(str(CNN))
    with pytest.raises(BadInputError, match="SITE=OP"):
        parse_swap("@down3")
    with pytest.raises(BadInputError, match="unknown site alias"):
        convert(bundle, [("@down9", "max")])
    with pytest.raises(BadInputError, match="--eigvecs 2"):
        convert(bundle, [("@down3", f"learned:{_pool_file(tmp_path / 'k1.safetensors', k=1)}")])
    with pytest.raises(BadInputError, match="fitted at site stage2.0"):
        convert(bundle, [("@down3", f"learned:{_pool_file(tmp_path / 's2.safetensors', site='stage2.0')}")])
    with pytest.raises(BadInputError, match="--at input"):
        convert(bundle, [("@down3", f"learned:{_pool_file(tmp_path / 'o.safetensors', at='output')}")])
    with pytest.raises(BadInputError, match="fitted for a 6×6 grid but stage3.0 sees 8×8"):
        convert(bundle, [("@down3", f"learned:{_pool_file(tmp_path / 'g.safetensors', grid=(6, 6))}")])
    with pytest.raises(BadInputError, match="swapped twice"):
        convert(bundle, [("@down1", "max"), ("stage1.0", "avg")])
    with pytest.raises(BadInputError, match="gives"):
        convert(bundle, [("@down1", "max:kernel=2,stride=4")])


def test_cli_convert_then_evaluate(tmp_path, cli):
    out = tmp_path / "conv.safetensors"
    code, stdout, err = cli("convert", CNN, "--swap", "@down1=ppool", "--swap", "@global=gem:p=3", "-o", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert [s["site"] for s in doc["swaps"]] == ["stage1.0", "global_pool"]
    assert doc["macs"]["after"] > doc["macs"]["before"]  # the destrided conv runs at 4× the positions
    assert "@down1" in err and "destride" in err
    code, stdout, err = cli("evaluate", out, "--data", "digits:test", "--limit", "40", "--json")
    assert code == 0, err
    assert json.loads(stdout)["results"][0]["n"] == 40


def test_cli_convert_error_writes_nothing(tmp_path, cli):
    out = tmp_path / "conv.safetensors"
    code, _, err = cli("convert", CNN, "--swap", "@down3=learned:" + str(tmp_path / "missing.safetensors"), "-o", out)
    assert code == 2 and "file not found" in err and not out.exists()
    code, _, err = cli("convert", CNN, "--swap", "@down1=fancy", "-o", out)
    assert code == 2 and "unknown pooling operator" in err and not out.exists()
    assert len(err.strip().splitlines()) == 1


def test_timm_head_pool_that_flattens_keeps_flattening(tmp_path):
    bundle = build_model("timm:resnet18", num_classes=4, input_size="3x64x64")
    new, (r,) = convert(bundle, [("@global", "gem")])
    assert r.shape == [512] and new.swaps[-1]["flatten"] is True
    tiny = build_model("timm:resnet18", num_classes=4, input_size="3x32x32")  # the head sees 1×1: GeM is the identity
    with pytest.raises(BadInputError, match="sees a 1×1 map at this input size"):
        convert(tiny, [("@global", "gem")])
    save_checkpoint(new, None, tmp_path / "t.safetensors")
    x = _x(bundle, 2)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "t.safetensors").module(x), new.module.eval()(x))
