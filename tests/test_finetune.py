"""finetune: trains what it should, records itself in the manifest, is reproducible, fails cleanly."""

from __future__ import annotations

import json

import pytest
import torch

from poolcli.errors import BadInputError
from poolcli.models.checkpoint import load_checkpoint
from poolcli.models.convert import convert
from poolcli.models.spec import build_model
from poolcli.pipeline.finetune import FinetuneConfig

from .conftest import CNN

SMALL = dict(data="digits:train", limit=128, epochs=1, batch_size=32, device="cpu")


def finetune(bundle, cfg: FinetuneConfig):
    """The API step with a config (the pipeline takes opened datasets)."""
    import dataclasses

    from poolcli import api

    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "val")}
    return api.finetune(bundle, cfg.data, val=cfg.val, **fields)


def _converted():
    bundle = build_model(str(CNN))
    return convert(bundle, [("@down1", "ppool"), ("@global", "gem:p=3")])[0]


def test_finetune_trains_records_and_reproduces():
    a, doc = finetune(_converted(), FinetuneConfig(**SMALL, val="digits:test"))
    b, _ = finetune(_converted(), FinetuneConfig(**SMALL, val="digits:test"))
    x = torch.rand(2, *a.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.module(x), b.module(x))  # same seed, same model
    assert doc["images"] == 128 and len(doc["history"]) == 1 and 0 <= doc["final"]["val_top1"] <= 1
    assert a.extra["finetune"]["pool_sites"] == ["stage1.0", "global_pool"]
    assert a.swaps == _converted().swaps


def test_only_pools_leaves_the_rest_alone():
    before = _converted()
    conv_w = before.module.get_submodule("stage2.0").weight.detach().clone()
    before_conv1 = before.module.get_submodule("stage1.0.0").weight.detach().clone()
    p0 = float(before.module.get_submodule("global_pool").p.detach())
    after, doc = finetune(before, FinetuneConfig(**SMALL, only_pools=True, lr=1e-2))
    assert torch.equal(after.module.get_submodule("stage2.0").weight, conv_w)
    assert float(after.module.get_submodule("global_pool").p.detach()) != p0
    # only the new operators train: the stride-1 conv that P-pooling follows at stage1.0 is not "the pooling"
    assert doc["trainable_params"] == sum(
        p.numel() for path in ("stage1.0.1", "global_pool") for p in after.module.get_submodule(path).parameters()
    )
    assert torch.equal(after.module.get_submodule("stage1.0.0").weight, before_conv1)


def test_pool_parameters_get_their_own_lr_and_no_decay():
    from poolcli.train.loop import param_groups

    model = _converted().module
    groups = param_groups(model, 1e-3, 0.05, [model.get_submodule("global_pool")], pool_lr_mult=10)
    assert groups[1]["lr"] == pytest.approx(1e-2) and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"] == [model.get_submodule("global_pool").p]


def test_finetune_errors():
    with pytest.raises(BadInputError, match="--epochs"):
        finetune(_converted(), FinetuneConfig(**{**SMALL, "epochs": 0}))
    with pytest.raises(BadInputError, match="no trainable parameters"):
        finetune(build_model(str(CNN)), FinetuneConfig(**SMALL, only_pools=True))  # nothing swapped
    five = build_model("poolcli:convnet4", num_classes=5, in_chans=1, input_size="1x32x32")
    with pytest.raises(BadInputError, match="5 outputs"):
        finetune(five, FinetuneConfig(**SMALL))


def test_cli_convert_finetune_evaluate(tmp_path, cli):
    conv, ft = tmp_path / "conv.safetensors", tmp_path / "ft.safetensors"
    assert cli("convert", CNN, "--swap", "@global=gem", "-o", conv)[0] == 0
    code, out, err = cli(
        "finetune",
        conv,
        "--limit",
        "96",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--val",
        "digits:test",
        "--shift",
        "1",
        "-o",
        ft,
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert [h["epoch"] for h in doc["history"]] == [1, 2] and "epoch 2/2" in err
    assert load_checkpoint(ft).swaps == load_checkpoint(conv).swaps
    code, _, err = cli("finetune", conv, "--epochs", "0", "-o", tmp_path / "bad.safetensors")
    assert code == 2 and "--epochs" in err and not (tmp_path / "bad.safetensors").exists()


def test_zsr_regulariser_for_gsp_sites():
    bundle = convert(build_model(str(CNN)), [("@global", "gsp:m=8")])[0]
    gsp = bundle.module.get_submodule("global_pool")
    gsp.init_prototypes(torch.randn(64, 512))  # skip the GAP warm-up so that z is informative at once
    plain, doc0 = finetune(convert(build_model(str(CNN)), [("@global", "gsp:m=8")])[0], FinetuneConfig(**SMALL))
    _, doc = finetune(bundle, FinetuneConfig(**SMALL, zsr_weight=0.1))
    assert (
        doc["zsr_weight"] == 0.1 and doc["trainable_params"] == doc0["trainable_params"] + 10 * 512
    )  # + class embeddings
    assert doc["final"]["loss"] > doc0["final"]["loss"]  # the regulariser's term is in the loss
    assert gsp.attributes is None and not gsp.keep_attributes  # nothing kept after training
    with pytest.raises(BadInputError, match="needs a GSP"):
        finetune(_converted(), FinetuneConfig(**SMALL, zsr_weight=0.1))
