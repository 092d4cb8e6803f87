"""Photos are fed through the model's own preprocessing, built by its library: the tensors poolcli makes
equal those of torchvision's weights transforms and timm's create_transform."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

import poolcli
from poolcli.data.transforms import PhotoGeometry, Preprocess

from .conftest import CNN


def _reference(spec: str, bundle):
    if spec.startswith("tv:"):
        from torchvision.models import get_model_weights

        return get_model_weights(spec[3:]).DEFAULT.transforms()
    from timm.data import create_transform, resolve_model_data_config

    return create_transform(**resolve_model_data_config(bundle.module), is_training=False)


@pytest.mark.parametrize("spec", ["tv:resnet18", "tv:efficientnet_b3", "timm:resnet18", "timm:vit_tiny_patch16_224"])
def test_photos_equal_the_library_transform(spec, photos):
    bundle = poolcli.load_model(spec)
    ds = poolcli.open_data(f"folder:{photos}:train", bundle)
    ref = _reference(spec, bundle)
    assert len(ds) == 12
    for i in range(len(ds)):
        x, _ = ds[i]
        want = ref(Image.open(ds.raw.names(int(ds.indices[i]))).convert("RGB"))
        assert x.shape == want.shape == (3, *bundle.input_size[1:])
        assert torch.allclose(x, want, atol=1e-6, rtol=0), (spec, i, float((x - want).abs().max()))


def test_model_defaults_come_from_the_weights():
    b3 = poolcli.load_model("tv:efficientnet_b3")
    assert b3.input_size == (3, 300, 300)
    assert (b3.geometry.resize, b3.geometry.interpolation) == (320, "bicubic")
    r18 = poolcli.load_model("timm:resnet18")
    assert (r18.geometry.crop_pct, r18.geometry.interpolation) == (0.95, "bicubic")


def test_a_wide_photo_is_cropped_not_squashed(photos):
    bundle = poolcli.load_model("tv:resnet18")
    path = next((photos / "train" / "city").glob("1.jpg"))  # 565×218
    x = bundle.transform(Image.open(path).convert("RGB"))
    assert x.shape == (3, 224, 224)
    from torchvision.transforms.functional import pil_to_tensor

    squashed = Preprocess((3, 224, 224), bundle.mean, bundle.std)(pil_to_tensor(Image.open(path).convert("RGB")))
    assert float((x - squashed).abs().mean()) > 0.1  # the whole-image resize of small arrays is not used


def test_overrides_reach_the_library_transform(photos):
    from timm.data import create_transform

    bundle = poolcli.load_model("timm:resnet18", crop_pct=1.0, interpolation="bilinear", input_size="3x160x160")
    ref = create_transform(
        input_size=(3, 160, 160),
        interpolation="bilinear",
        crop_pct=1.0,
        mean=bundle.mean,
        std=bundle.std,
        is_training=False,
    )
    img = Image.open(next((photos / "val" / "garden").glob("2.jpg"))).convert("RGB")
    assert torch.allclose(bundle.transform(img), ref(img), atol=1e-6, rtol=0)
    tv = poolcli.load_model("tv:efficientnet_b3", input_size="3x240x240")
    assert tv.geometry.resize == 256  # the resize follows the crop: 320/300 · 240


def test_mean_std_overrides_and_bad_values():
    bundle = poolcli.load_model("timm:resnet18", mean=(0.5,), std=(0.25, 0.25, 0.25))
    assert bundle.mean == (0.5,) * 3 and bundle.std == (0.25,) * 3
    with pytest.raises(poolcli.errors.BadInputError, match="--std"):
        poolcli.load_model("timm:resnet18", std=(0.0,))
    with pytest.raises(poolcli.errors.BadInputError, match="--crop-pct"):
        poolcli.load_model("timm:resnet18", crop_pct=7.0)


def test_grey_model_on_photos_averages_then_normalises(photos):
    from timm.data import create_transform

    bundle = poolcli.load_model(str(CNN))
    img = Image.open(next((photos / "train" / "city").glob("0.jpg"))).convert("RGB")
    x = bundle.transform(img)
    g = bundle.geometry
    plain = create_transform(
        input_size=(3, 32, 32),
        interpolation=g.interpolation,
        crop_pct=g.crop_pct,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        is_training=False,
    )(img)
    want = (plain.mean(0, keepdim=True) - bundle.mean[0]) / bundle.std[0]
    assert x.shape == (1, 32, 32) and torch.allclose(x, want, atol=1e-6)


def test_checkpoints_record_and_reuse_the_preprocessing(tmp_path):
    new, _ = poolcli.convert(
        "tv:efficientnet_b0", ["@global=gem"], output=tmp_path / "m.safetensors", input_size="3x96x96"
    )
    back = poolcli.load_model(tmp_path / "m.safetensors")
    assert back.geometry == new.geometry and back.geometry.style == "tv"
    assert back.geometry.interpolation == "bicubic" and back.input_size == (3, 96, 96)


def test_datasets_and_transforms_pickle_for_spawned_workers(photos):
    from torch.utils.data import DataLoader

    bundle = poolcli.load_model("tv:resnet18", input_size="3x64x64")
    for data in (f"folder:{photos}:val", "digits:test"):
        ds = poolcli.open_data(data, bundle, limit=6)
        pickle.loads(pickle.dumps(ds))
        inproc = torch.cat([x for x, _ in DataLoader(ds, batch_size=3)])
        spawned = DataLoader(ds, batch_size=3, num_workers=1, multiprocessing_context="spawn")
        assert torch.equal(torch.cat([x for x, _ in spawned]), inproc)


def test_geometry_json_round_trip():
    g = PhotoGeometry(style="tv", interpolation="bicubic", crop_pct=0.9375, resize=320)
    assert PhotoGeometry.from_json(g.to_json()) == g
