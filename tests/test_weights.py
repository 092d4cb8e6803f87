"""Weights: cached pretrained weights (never downloaded), head reset for other classes, training checkpoints
of timm/torchvision (argparse.Namespace allow-listed, EMA, module. prefix), random weights said aloud."""

from __future__ import annotations

import argparse
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

import poolcli
from poolcli.errors import BadInputError


def _state(spec: str, seed: int, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in poolcli.build_model(spec, **kw).module.state_dict().items()}


def _same(a: dict, b: dict, skip: tuple[str, ...] = ()) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if not k.startswith(skip))


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def hf_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_tv_pretrained_from_the_torch_hub_cache_and_head_reset(torch_hub):
    state = _state("tv:resnet18", 1)
    torch.save(state, torch_hub / "resnet18-f37072fd.pth")  # the file name of ResNet18_Weights.DEFAULT's URL
    bundle = poolcli.load_model("tv:resnet18", pretrained=True)
    assert _same(state, bundle.module.state_dict()) and bundle.weights.startswith("pretrained:")
    with pytest.warns(UserWarning, match="re-initialised for 10 classes"):
        ten = poolcli.load_model("tv:resnet18", pretrained=True, num_classes=10)
    got = ten.module.state_dict()
    assert got["fc.weight"].shape == (10, 512) and ten.head_reset == ["fc"]
    assert _same(state, got, skip=("fc.",))


def test_timm_pretrained_from_the_hf_cache_through_timms_loader(hf_hub):
    state = _state("timm:resnet18", 2)
    repo = hf_hub / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    bundle = poolcli.load_model("timm:resnet18", pretrained=True)
    assert _same(state, bundle.module.state_dict())
    with pytest.warns(UserWarning, match="re-initialised"):
        five = poolcli.load_model("timm:resnet18", pretrained=True, num_classes=5)
    assert five.module.fc.weight.shape == (5, 512) and _same(state, five.module.state_dict(), skip=("fc.",))


def test_missing_cache_names_the_paths_and_never_downloads(torch_hub, hf_hub, cli):
    code, _, err = cli("inspect", "tv:resnet18", "--pretrained")
    assert code == 2 and "never downloads" in err and str(torch_hub) in err and "--weights FILE" in err
    code, _, err = cli("inspect", "timm:resnet18", "--pretrained")
    assert code == 2 and "models--timm--resnet18.a1_in1k" in err and "timm.create_model" in err
    code, _, err = cli("inspect", "poolcli:convnet4", "--pretrained")
    assert code == 2 and "no pretrained weights" in err


def test_training_checkpoints_with_namespace_ema_and_module_prefix(tmp_path):
    plain, ema = _state("timm:resnet18", 3, num_classes=7), _state("timm:resnet18", 4, num_classes=7)
    ckpt = {  # what timm's train.py saves (DDP-wrapped), and torchvision's references save alike
        "arch": "resnet18",
        "state_dict": {f"module.{k}": v for k, v in plain.items()},
        "state_dict_ema": ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "args": argparse.Namespace(model="resnet18", lr=0.1, epochs=3, amp=True, output="", mean=None),
        "epoch": 2,
        "metric": 71.5,
        "version": 2,
    }
    path = tmp_path / "checkpoint-2.pth.tar"
    torch.save(ckpt, path)
    got = poolcli.load_model("timm:resnet18", weights=path)  # 7 classes: taken from the weights' head
    assert got.num_classes == 7 and _same(plain, got.module.state_dict())
    got_ema = poolcli.load_model("timm:resnet18", weights=path, use_ema=True)
    assert _same(ema, got_ema.module.state_dict())
    torch.save(plain, tmp_path / "bare.pth")
    with pytest.raises(BadInputError, match="no EMA weights"):
        poolcli.load_model("timm:resnet18", weights=tmp_path / "bare.pth", use_ema=True)


def test_weights_for_other_classes_get_a_new_head(tmp_path):
    state = _state("tv:resnet18", 5)  # 1000 classes
    torch.save(state, tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="fc re-initialised for 10 classes"):
        ten = poolcli.load_model("tv:resnet18", weights=tmp_path / "w.pth", num_classes=10)
    assert ten.module.fc.weight.shape == (10, 512) and _same(state, ten.module.state_dict(), skip=("fc.",))


def test_random_weights_are_said_on_stderr_and_in_json(cli):
    code, out, err = cli("evaluate", "poolcli:convnet4", "--data", "digits:test", "--limit", "20", "--json")
    assert code == 0 and "random weights" in err
    assert json.loads(out)["results"][0]["weights"] == "random"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        poolcli.load_model("poolcli:convnet4")  # loading alone is silent: only using the weights warns


def test_evaluate_takes_one_weights_file_per_model(tmp_path, cli):
    torch.save(_state("poolcli:convnet4", 6), tmp_path / "a.pth")
    code, _, err = cli(
        "evaluate", "poolcli:convnet4", "poolcli:convnet4", "--weights", tmp_path / "a.pth", "--limit", "10"
    )
    assert code == 2 and "1 --weights for 2 models" in err
    code, out, err = cli(
        "evaluate",
        "poolcli:convnet4",
        "poolcli:convnet4",
        "--weights",
        tmp_path / "a.pth",
        "--weights",
        tmp_path / "a.pth",
        "--limit",
        "10",
        "--json",
    )
    assert code == 0, err
    assert [r["weights"] for r in json.loads(out)["results"]] == [f"file:{tmp_path / 'a.pth'}"] * 2


def test_hf_cache_location_follows_the_environment(monkeypatch, tmp_path):
    from poolcli.models.pretrained import hf_cache_dir

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    assert hf_cache_dir() == type(tmp_path)(os.path.expanduser("~")) / ".cache" / "huggingface" / "hub"


def test_torchvision_weight_tags_bring_their_own_preprocessing_and_size():
    v1 = poolcli.load_model("tv:resnet50.IMAGENET1K_V1")
    assert v1.geometry.resize == 256 and poolcli.load_model("tv:resnet50").geometry.resize == 232
    swag = poolcli.load_model("tv:vit_b_16.IMAGENET1K_SWAG_E2E_V1")
    assert swag.input_size == (3, 384, 384) and swag.module.image_size == 384
    assert (swag.geometry.interpolation, swag.geometry.resize) == ("bicubic", 384)
    with pytest.raises(BadInputError, match="no weights 'BOGUS'"):
        poolcli.load_model("tv:resnet18.BOGUS")
    with pytest.raises(BadInputError, match="timm cannot build"):
        poolcli.load_model("timm:resnet18.bogus")
    with pytest.raises(BadInputError, match="--use-ema"):
        poolcli.load_model("timm:resnet18", use_ema=True)


def test_timm_hub_vit_loads_from_the_cache(hf_hub):
    state = _state("timm:vit_tiny_patch16_224", 7)
    snap = hf_hub / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "r1"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("r1")
    save_file(state, str(snap / "model.safetensors"))
    got = poolcli.load_model("timm:vit_tiny_patch16_224", pretrained=True)
    assert _same(state, got.module.state_dict())
    assert got.classes is not None and got.classes[0] == "n01440764"  # ImageNet synsets, as folder names


def test_torchvision_reference_ema_checkpoint(tmp_path):
    plain, ema = _state("tv:resnet18", 8), _state("tv:resnet18", 9)
    averaged = {"n_averaged": torch.tensor(100), **{f"module.{k}": v for k, v in ema.items()}}
    torch.save(
        {"model": plain, "model_ema": averaged, "args": argparse.Namespace(lr=0.5), "epoch": 9}, tmp_path / "r.pth"
    )
    assert _same(plain, poolcli.load_model("tv:resnet18", weights=tmp_path / "r.pth").module.state_dict())
    got = poolcli.load_model("tv:resnet18", weights=tmp_path / "r.pth", use_ema=True)
    assert _same(ema, got.module.state_dict()) and got.weights.endswith("(ema)")


def test_pretrained_imagenet_model_on_other_classes_is_refused(torch_hub, photos, cli):
    torch.save(_state("tv:resnet18", 1), torch_hub / "resnet18-f37072fd.pth")
    code, _, err = cli("evaluate", "tv:resnet18", "--pretrained", "--data", f"folder:{photos}:val")
    assert code == 2 and "other classes" in err and "n01440764" in err
    code, out, err = cli(
        "evaluate", "tv:resnet18", "--pretrained", "--data", f"folder:{photos}:val", "--allow-class-mismatch", "--json"
    )
    assert code == 0 and "top5" in json.loads(out)["results"][0]  # 1000 outputs: top-5 means something


def test_evaluate_mixes_checkpoints_and_pretrained_architectures(torch_hub, tmp_path, cli):
    from .conftest import CNN

    torch.save(_state("poolcli:convnet4", 1), tmp_path / "w.pth")
    code, out, err = cli("evaluate", CNN, "poolcli:convnet4", "--num-classes", "10", "--limit", "20", "--json")
    assert code == 0, err
    assert [r["weights"].split(":")[0] for r in json.loads(out)["results"]] == ["checkpoint", "random"]


def test_checkpoints_remember_random_origins(tmp_path, cli):
    out = tmp_path / "c.safetensors"
    code, _, err = cli("convert", "poolcli:convnet4", "--swap", "@global=gem", "-o", out)
    assert code == 0 and "random weights" in err
    code, _, err = cli("evaluate", out, "--limit", "20")
    assert code == 0 and "made from random weights" in err


def test_size_bound_checkpoints_refuse_another_input_size(tmp_path):
    vit = poolcli.load_model("timm:vit_tiny_patch16_224", input_size="3x32x32")
    poolcli.save_checkpoint(vit, None, tmp_path / "v.safetensors")
    with pytest.raises(BadInputError, match="built for 32×32"):
        poolcli.load_model(tmp_path / "v.safetensors", input_size="3x48x48")
