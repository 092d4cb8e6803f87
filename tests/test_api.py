"""The Python API takes nn.Modules and Datasets/DataLoaders as well as spec strings."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import poolcli
from poolcli.errors import BadInputError

from .conftest import CNN


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )


def _data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 3)


def test_a_bare_module_with_a_dataset_and_a_loader():
    net = _tiny_net()
    model = poolcli.load_model(net, input_size=(1, 16, 16))
    report = poolcli.inspect(model)
    assert "@global" in {s.alias for s in report.sites} and report.stages
    scores = poolcli.evaluate([model], DataLoader(_data(), batch_size=16))
    r = scores["results"][0]
    assert r["n"] == 48 and "top5" not in r and 0 <= r["top1"] <= 1 and r["weights"] == "given"
    stats, meta = poolcli.collect(model, "@down1", _data(), device="cpu")
    assert meta["images"] == 48 and stats.counts.tolist() == [16, 16, 16]
    fit = poolcli.fit(stats, meta, alphas=[1.0])
    assert fit["fits"][0]["out_grid"] == [8, 8]  # the max-pool site sees 16×16


def test_a_module_needs_its_input_size_and_cannot_take_spec_options():
    with pytest.raises(BadInputError, match="input_size"):
        poolcli.load_model(_tiny_net())
    with pytest.raises(BadInputError, match="spec strings"):
        poolcli.load_model(_tiny_net(), input_size=(1, 16, 16), pretrained=True)
    with pytest.raises(TypeError, match="unknown options"):
        poolcli.load_model(str(CNN), colour="red")


def test_fit_checks_its_alphas():
    stats, meta = poolcli.collect(str(CNN), "@down3", "digits:train", limit=100, device="cpu")
    with pytest.raises(BadInputError, match="given twice"):
        poolcli.fit(stats, meta, alphas=[1, 1.0])


def test_finetune_takes_datasets_and_model_options(tmp_path):
    ds = TensorDataset(torch.rand(40, 1, 32, 32), torch.arange(40) % 4)
    new, report = poolcli.finetune("poolcli:convnet4", DataLoader(ds, batch_size=8), epochs=1, num_classes=4)
    assert new.num_classes == 4 and report["images"] == 40 and new.classes == ["0", "1", "2", "3"]
    with pytest.raises(TypeError, match="unknown settings"):
        poolcli.finetune("poolcli:convnet4", ds, epochs=1, colour="red")


def test_top5_follows_the_logits_and_modules_are_not_checkpoints(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 8))
    model = poolcli.load_model(net, input_size=(1, 16, 16))
    scores = poolcli.evaluate([model], TensorDataset(torch.rand(16, 1, 16, 16), torch.arange(16) % 8))
    assert "top5" in scores["results"][0]
    with pytest.raises(BadInputError, match="bare nn.Module"):
        poolcli.convert(_tiny_net(), ["@down1=avg"], output=tmp_path / "x.safetensors", input_size=(1, 16, 16))
    assert not (tmp_path / "x.safetensors").exists()


def test_open_data_takes_a_model_spec():
    ds = poolcli.open_data("digits:test", str(CNN), limit=5)
    assert len(ds) == 5 and ds[0][0].shape == (1, 32, 32)


def test_convert_moves_the_parents_facts_to_lineage():
    from poolcli.io.tensorfile import read_metadata

    new, _ = poolcli.convert(str(CNN), ["@global=gem"])
    parent = read_metadata(CNN)["extra"]
    assert not set(parent) & set(new.extra) - {"origin"} and set(new.extra) <= {"lineage", "origin"}
    assert {k: new.extra["lineage"][-1][k] for k in parent} == parent
