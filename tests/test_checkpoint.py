"""Checkpoint format: bit-exact round trip, atomic writes, safe loading, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from poolcli import load_model, save_checkpoint
from poolcli.errors import BadInputError
from poolcli.io.tensorfile import read_metadata
from poolcli.models.spec import build_model
from poolcli.models.weights import read_state_dict

from .conftest import CNN


def test_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    bundle = build_model("poolcli:resnet_small", num_classes=7)
    bundle.module.train()(torch.randn(4, 1, 32, 32))  # move BN running stats away from their init
    path = tmp_path / "m.safetensors"
    save_checkpoint(bundle, None, path)
    loaded = load_model(path).module
    a, b = bundle.module.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(bundle.module.eval()(x), loaded(x))
    meta = read_metadata(path)
    assert meta["base"] == {"source": "poolcli", "name": "resnet_small", "kwargs": {"num_classes": 7}}
    assert meta["input_size"] == [1, 32, 32]


def test_fixture_manifest_and_accuracy_recorded():
    meta = read_metadata(CNN)
    assert meta["format"] == "poolcli.checkpoint" and meta["classes"] == [str(i) for i in range(10)]
    assert meta["extra"]["test_top1"] > 0.95 and CNN.stat().st_size < 5e6


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    import errno

    from poolcli.errors import RunError
    from poolcli.io.tensorfile import write_tensors

    def boom(tmp):
        raise RuntimeError("verification failed")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RuntimeError):
        write_tensors(tmp_path / "x.safetensors", {"a": torch.ones(2)}, {}, verify=boom)
    with pytest.raises(RunError, match="no space left"):
        write_tensors(tmp_path / "x.safetensors", {"a": torch.ones(2)}, {}, verify=full)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_a_clean_error(tmp_path, cli):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(CNN.read_bytes()[:5000])
    code, out, err = cli("inspect", bad)
    assert code == 2 and out == ""
    assert "truncated or corrupt" in err and "Traceback" not in err


def test_missing_file(cli):
    code, _, err = cli("inspect", "nope/missing.safetensors")
    assert code == 2 and "file not found" in err


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_pickle_that_runs_code_is_refused(tmp_path, cli):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": Evil()}, f)
    with pytest.raises(BadInputError, match="pickle that needs code"):
        read_state_dict(path)
    code, out, err = cli("inspect", "poolcli:convnet4", "--weights", path)
    assert code == 2 and "refusing to load" in err and "owned" not in out


def test_pth_weights_load_with_weights_only(tmp_path):
    src = build_model("poolcli:convnet4", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.module.state_dict().items()}}, path)
    dst = build_model("poolcli:convnet4", num_classes=10, weights=path)
    for k, v in src.module.state_dict().items():
        assert torch.equal(v, dst.module.state_dict()[k])


def test_mismatched_weights_name_the_keys(tmp_path, cli):
    path = tmp_path / "w.pth"
    torch.save(build_model("poolcli:convnet4", num_classes=10, in_chans=3).module.state_dict(), path)
    code, _, err = cli("inspect", "poolcli:convnet4", "--num-classes", "10", "--weights", path)
    assert code == 2 and "vs" in err and "[64, 3, 3, 3]" in err and "--in-chans" in err


def test_safetensors_without_manifest_explains(tmp_path, cli):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    code, _, err = cli("inspect", path)
    assert code == 2 and "--weights" in err
