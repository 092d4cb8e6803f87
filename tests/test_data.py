"""Dataset specs: digits and tiny files in every on-disk format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from poolcli.data.specs import open_dataset, parse_classes, parse_data_spec, select_indices
from poolcli.errors import BadInputError

SIZE = dict(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_digits_fixed_split():
    train = open_dataset("digits:train", **SIZE)
    test = open_dataset("digits", **SIZE)  # default split: test
    assert len(train) == 1437 and len(test) == 360
    assert set(train.raw.labels.tolist()) == set(range(10))
    x, y = test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    again = open_dataset("digits:test", **SIZE)
    assert torch.equal(again[5][0], test[5][0])


def test_spec_parsing():
    assert str(parse_data_spec("cifar10:/data/c:train")) == "cifar10:/data/c:train"
    assert parse_data_spec("folder:/a:b/c").path == "/a:b/c"
    assert parse_classes("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(BadInputError):
        parse_data_spec("imagenet:/x")
    with pytest.raises(BadInputError):
        parse_classes("a-b")


def test_selection_caps_and_limits():
    labels = torch.tensor([0, 1, 0, 1, 0, 2, 2])
    assert select_indices(labels, classes=[0]).tolist() == [0, 2, 4]
    assert select_indices(labels, max_per_class=1).tolist() == [0, 1, 5]
    assert len(select_indices(labels, limit=3, seed=1)) == 3
    ds = open_dataset("digits:train", **SIZE, max_per_class=5)
    assert ds.class_counts() == {c: 5 for c in range(10)}


def _cifar_batch(n, key, rng):
    return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key: rng.integers(0, 10, n).tolist()}


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_on_disk(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        base = tmp_path / "cifar-10-batches-py"
        base.mkdir()
        for i in range(1, 6):
            pickle.dump(_cifar_batch(4, "labels", rng), open(base / f"data_batch_{i}", "wb"))
        batch = _cifar_batch(3, "labels", rng)
        pickle.dump(batch, open(base / "test_batch", "wb"))
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(base / "batches.meta", "wb"))
    else:
        base = tmp_path / "cifar-100-python"
        base.mkdir()
        pickle.dump(_cifar_batch(6, "fine_labels", rng), open(base / "train", "wb"))
        batch = _cifar_batch(3, "fine_labels", rng)
        pickle.dump(batch, open(base / "test", "wb"))
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, open(base / "meta", "wb"))
    test = open_dataset(f"{kind}:{tmp_path}:test", input_size=(3, 32, 32), mean=(0,) * 3, std=(1,) * 3)
    assert len(test) == 3
    x, y = test[1]
    expect = torch.from_numpy(batch["data"][1].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expect) and y == batch["fine_labels" if kind == "cifar100" else "labels"][1]
    assert len(open_dataset(f"{kind}:{tmp_path}:train", **SIZE)) in (20, 6)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit(99)",))

    pickle.dump({"data": Evil(), "labels": []}, open(base / "test_batch", "wb"))
    pickle.dump({"label_names": []}, open(base / "batches.meta", "wb"))
    with pytest.raises(BadInputError, match="not allowed"):
        open_dataset(f"cifar10:{tmp_path}:test", **SIZE)


def test_cifar_missing_files_named(tmp_path):
    with pytest.raises(BadInputError, match="test_batch"):
        open_dataset(f"cifar10:{tmp_path}:test", **SIZE)


def test_svhn_on_disk(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [10]], dtype=np.uint8)
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": X, "y": y})
    ds = open_dataset(f"svhn:{tmp_path}", input_size=(3, 32, 32), mean=(0,) * 3, std=(1,) * 3)
    assert ds.labels.tolist() == [0, 1, 2, 3, 0]
    assert torch.allclose(ds[2][0], torch.from_numpy(X[:, :, :, 2]).permute(2, 0, 1).float() / 255)


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
    ds = open_dataset(f"folder:{tmp_path}:train", **SIZE)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"] and ds[3][0].shape == (3, 16, 16)


def test_tensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"images": torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8), "labels": torch.arange(6) % 3},
        str(tmp_path / "d.safetensors"),
    )
    ds = open_dataset(f"tensors:{tmp_path / 'd.safetensors'}", **SIZE, classes="1")
    assert ds.labels.tolist() == [1, 1] and ds[0][0].shape == (3, 16, 16)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(BadInputError, match="'images'"):
        open_dataset(f"tensors:{tmp_path / 'bad.safetensors'}", **SIZE)


def test_empty_selection():
    with pytest.raises(BadInputError, match="empty"):
        open_dataset("digits:test", **SIZE, classes=[11])
