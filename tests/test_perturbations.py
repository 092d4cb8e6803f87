"""CIFAR-10-P / ImageNet-P perturbation sequences (poolcli.robust.perturbations).

Known answers come from the published generation code (hendrycks/robustness ImageNet-P/create_p/make_cifar_p.py
and make_imagenet_p.py) and from independent references written here: PIL ``Image.transform`` with the
torchvision 0.2 inverse affine matrix, the published tilt homography evaluated in numpy, ImageMagick's motion
blur kernel, scipy's Gaussian kernel, and pixel statistics of noise on constant images.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from poolcli.errors import BadInputError
from poolcli.robust import perturbations as P

RANDOM = ("gaussian_noise", "shot_noise", "speckle_noise", "snow")


def smooth_images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(torch.rand(n, c, max(h // 4, 2), max(w // 4, 2), generator=g), size=(h, w), mode="bilinear")
    z = z + 0.1 * torch.rand(n, c, h, w, generator=g)
    return (z - z.amin()) / (z.amax() - z.amin())


def blob(h: int, w: int, cx: float, cy: float, sigma: float = 1.2) -> torch.Tensor:
    """A Gaussian blob centred at continuous pixel coordinates (cx, cy) (pixel k covers [k, k + 1))."""
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)).float()[None, None]


def centroid(img: torch.Tensor) -> tuple[float, float]:
    img = img.double().reshape(img.shape[-2:])
    h, w = img.shape
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    total = img.sum()
    return float((img * xs).sum() / total), float((img * ys).sum() / total)


def tv02_inverse(angle, translate, scale, shear, center):
    """torchvision 0.2.x ``_get_inverse_affine_matrix`` (written out independently of the module)."""
    a, s = math.radians(angle), math.radians(shear)
    d = math.cos(a + s) * math.cos(a) + math.sin(a + s) * math.sin(a)
    m = [x * (1.0 / scale) / d for x in (math.cos(a + s), math.sin(a + s), 0.0, -math.sin(a), math.cos(a), 0.0)]
    m[2] += m[0] * (-center[0] - translate[0]) + m[1] * (-center[1] - translate[1]) + center[0]
    m[5] += m[3] * (-center[0] - translate[0]) + m[4] * (-center[1] - translate[1]) + center[1]
    return m


def pil_affine(img: np.ndarray, resample, **kw) -> np.ndarray:
    """torchvision 0.2 ``F.affine`` on a float image [C, H, W], per channel through PIL mode 'F'."""
    _, h, w = img.shape
    m = tv02_inverse(kw.get("angle", 0.0), kw.get("translate", (0, 0)), kw.get("scale", 1.0), kw.get("shear", 0.0),
                     (w * 0.5 + 0.5, h * 0.5 + 0.5))  # fmt: skip
    planes = [Image.fromarray(ch.astype(np.float32), mode="F") for ch in img]
    return np.stack([np.asarray(ch.transform((w, h), Image.AFFINE, m, resample)) for ch in planes])


def published_tilt(deg: float, w: float, h: float) -> np.ndarray:
    phi = theta = np.deg2rad(deg)
    f = np.sqrt(w**2 + h**2)
    p1 = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(theta), -np.sin(theta), 0], [0, np.sin(theta), np.cos(theta), 0],
                   [0, 0, 0, 1]])  # fmt: skip
    ry = np.array([[np.cos(phi), 0, -np.sin(phi), 0], [0, 1, 0, 0], [np.sin(phi), 0, np.cos(phi), 0], [0, 0, 0, 1]])
    tr = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
    p2 = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
    return p2 @ tr @ rx @ ry @ p1


# ------------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("table", P.TABLES)
@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_shape_range_determinism_batch_independence(name, table):
    c = 3 if name in ("brightness", "snow", "rotate", "gaussian_noise") else 1
    h, w = (20, 18) if table == "cifar" else (24, 46)  # wide enough that translate by ±20 px leaves content
    x = smooth_images(3, c, h, w)
    seeds = [11, 12, 13]
    out = P.sequence(name, x, seeds, table)
    count = P.frames(name, table)
    assert out.shape == (3, count, c, h, w) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, P.sequence(name, x, seeds, table))
    alone = P.sequence(name, x[1:2], seeds[1:2], table)
    torch.testing.assert_close(alone, out[1:2], atol=1e-6, rtol=0)
    other = P.sequence(name, x, [21, 22, 23], table)
    if name in RANDOM:
        assert not torch.equal(other, out)
    else:  # the published sequence is deterministic: the seeds do not enter
        torch.testing.assert_close(other, out, atol=1e-6, rtol=0)
    assert not torch.equal(out[:, 0], out[:, -1])


@pytest.mark.parametrize("name", RANDOM)
def test_random_sequences_same_with_threads(name):
    x = smooth_images(5, 3, 12, 12)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = P.sequence(name, x, [1, 2, 3, 4, 5], "cifar")
        torch.set_num_threads(2)
        threaded = P.sequence(name, x, [1, 2, 3, 4, 5], "cifar")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(serial, threaded)


def test_randomness_comes_from_the_image_generator_only():
    x = torch.full((1, 1, 8, 8), 0.5)
    torch.manual_seed(0)
    a = P.sequence("gaussian_noise", x, [7], "cifar")
    torch.manual_seed(1)
    b = P.sequence("gaussian_noise", x, [7], "cifar")
    assert torch.equal(a, b)
    normal = torch.randn((30, 1, 8, 8), generator=torch.Generator(device="cpu").manual_seed(7))
    torch.testing.assert_close(a[0, 1:], (0.5 + 0.02 * normal).clamp(0, 1))


def test_errors_and_lookup():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(BadInputError, match="unknown perturbation 'fog'.*valid: gaussian_noise"):
        P.sequence("fog", x, [0, 1], "cifar")
    with pytest.raises(BadInputError, match="'spatter' is not generated.*Canny.*valid: gaussian_noise"):
        P.frames("spatter", "cifar")
    with pytest.raises(BadInputError, match="unknown perturbation table 'tiny'; valid: cifar, imagenet"):
        P.sequence("rotate", x, [0, 1], "tiny")
    with pytest.raises(BadInputError, match="2 seeds for 3 images"):
        P.sequence("rotate", torch.rand(3, 3, 8, 8), [0, 1], "cifar")
    with pytest.raises(BadInputError, match="C = 1 or 3"):
        P.sequence("rotate", torch.rand(2, 2, 8, 8), [0, 1], "cifar")
    with pytest.raises(BadInputError, match="unknown perturbation"):
        P.compares_to_first("fog")
    assert P.sequence("rotate", torch.rand(0, 3, 8, 8), [], "cifar").shape == (0, 31, 3, 8, 8)
    assert P.table_for(32, 32) == "cifar" and P.table_for(84, 60) == "cifar"
    assert P.table_for(85, 10) == "imagenet" and P.table_for(224, 224) == "imagenet"
    assert set(P.PERTURBATIONS).isdisjoint(P.LEFT_OUT) and all(P.LEFT_OUT.values())


# ------------------------------------------------------------------------------- published parameters


def test_published_order_and_eval_rule():
    assert P.PERTURBATIONS == (
        "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow", "brightness", "translate", "rotate",
        "tilt", "scale", "speckle_noise", "gaussian_blur", "shear",
    )  # fmt: skip
    # cifar-p-eval.py / test.py: flip_prob(..., True if 'noise' in p else False)
    assert [n for n in P.PERTURBATIONS if P.compares_to_first(n)] == ["gaussian_noise", "shot_noise", "speckle_noise"]


def test_published_parameters_transcribed():
    par = P.parameters
    # frame counts: range(1, 31) after a clean frame, range(0, 21) / range(0, 16) / range(0, 41) / range(0, 31)
    expected_t = {n: 31 for n in P.PERTURBATIONS}
    assert {n: P.frames(n, "cifar") for n in P.PERTURBATIONS} == {**expected_t, "motion_blur": 21, "translate": 16}
    assert {n: P.frames(n, "imagenet") for n in P.PERTURBATIONS} == {**expected_t, "translate": 41}
    # noise levels (and the commented-out harder levels)
    assert par("gaussian_noise", "cifar")["sigma"] == 0.02 and par("gaussian_noise", "imagenet")["sigma"] == 0.03
    assert par("gaussian_noise", "imagenet")["difficulty_sigmas"] == [0.03, 0.05, 0.08]
    assert par("shot_noise", "cifar")["photons"] == 700 and par("shot_noise", "imagenet")["photons"] == 300
    assert par("shot_noise", "imagenet")["difficulty_photons"] == [300, 120, 60]
    assert par("speckle_noise", "cifar")["difficulty_sigmas"] == [0.05, 0.07, 0.1]
    assert par("speckle_noise", "imagenet")["sigma"] == 0.05
    assert par("gaussian_noise", "cifar")["first_frame"] == "clean" and par("rotate", "cifar")["first_frame"] != "clean"
    # motion blur: radius=6, sigma=1.8, angle=(i - 20) * 9 | radius=10, sigma=3, angle=(i - 30) * 4
    mb = par("motion_blur", "cifar")
    assert (mb["radius"], mb["sigma"], mb["angle_deg"]) == (6, 1.8, list(range(-180, 1, 9)))
    mb = par("motion_blur", "imagenet")
    assert (mb["radius"], mb["sigma"], mb["angle_deg"]) == (10, 3, list(range(-120, 1, 4)))
    # snow: normal(0.05, 0.3), clipped_zoom 2 | 3, < 0.5 -> 0, motion blur radius 10 sigma 2 | 14, 4, angle i*4 - 150
    sn = par("snow", "cifar")
    assert (sn["loc"], sn["scale"], sn["zoom"], sn["threshold"]) == (0.05, 0.3, 2, 0.5)
    assert (sn["radius"], sn["sigma"]) == (10, 2)
    assert sn["blur_angle_deg"] == list(range(-150, -29, 4)) and (sn["keep"], sn["gray_gain"]) == (0.85, 1.5)
    sn = par("snow", "imagenet")
    assert (sn["zoom"], sn["radius"], sn["sigma"]) == (3, 14, 4)
    # brightness: c = (i - 15) * 1.5 / 100 | (i - 15) * 2 / 100
    assert par("brightness", "cifar")["value_shift"][0] == pytest.approx(-0.225)
    assert par("brightness", "cifar")["step"] == pytest.approx(0.015)
    assert par("brightness", "imagenet")["value_shift"][-1] == pytest.approx(0.3)
    assert par("brightness", "imagenet")["step"] == pytest.approx(0.02)
    # geometry
    assert par("translate", "cifar")["shift_px"] == list(range(-7, 9))
    assert par("translate", "imagenet")["shift_px"] == list(range(-20, 21))
    assert par("translate", "cifar")["interpolation"] == "nearest"
    assert par("rotate", "cifar")["interpolation"] == "bilinear"
    for t in P.TABLES:
        assert par("rotate", t)["angle_deg"] == list(range(-15, 16)) == par("shear", t)["shear_deg"]
        assert par("zoom_blur", t)["zoom"] == pytest.approx([1 + 0.004 * i for i in range(31)])
    assert par("tilt", "cifar")["tilt_deg"] == pytest.approx([0.75 * (i - 15) for i in range(31)])
    assert par("tilt", "imagenet")["tilt_deg"] == list(range(-15, 16))
    assert (par("scale", "cifar")["start"], par("scale", "cifar")["stop"]) == pytest.approx((0.70, 1.30))
    assert par("scale", "cifar")["step"] == pytest.approx(0.02)
    assert (par("scale", "imagenet")["start"], par("scale", "imagenet")["stop"]) == pytest.approx((0.40, 1.15))
    assert par("scale", "imagenet")["step"] == pytest.approx(0.025)
    gb = par("gaussian_blur", "cifar")
    assert (gb["start"], gb["step"], gb["truncate"]) == pytest.approx((0.3, 0.015, 7.0))
    gb = par("gaussian_blur", "imagenet")
    assert (gb["start"], gb["step"], gb["truncate"]) == pytest.approx((0.25, 0.035, 6.0))
    for name in P.PERTURBATIONS:
        for table in P.TABLES:
            p = json.loads(json.dumps(par(name, table)))
            assert p["frames"] == P.frames(name, table) and p["source"].startswith("hendrycks/robustness ImageNet-P/")


# ------------------------------------------------------------------------------------------- geometry


def test_translate_cifar_is_an_integer_shift_with_zero_fill():
    x = smooth_images(2, 3, 32, 32)
    out = P.sequence("translate", x, [0, 0], "cifar")
    for i, s in enumerate(range(-7, 9)):
        frame = out[:, i]
        shifted = torch.roll(x, shifts=s, dims=-1)
        if s >= 0:
            assert torch.equal(frame[..., s:], shifted[..., s:]) and not frame[..., :s].any()
        else:
            assert torch.equal(frame[..., :s], shifted[..., :s]) and not frame[..., s:].any()


def test_translate_imagenet_reveals_the_canvas_ring_then_zeros():
    x = smooth_images(1, 1, 56, 56)  # canvas ring: round(16 / 224 * 56) = 4 px
    out = P.sequence("translate", x, [0], "imagenet")
    s = 20
    frame = out[0, 40]  # shift +20
    assert torch.equal(frame[..., s:], x[0, ..., : 56 - s])
    for j in range(s - 4, s):  # reflect-padded ring: canvas column -k shows x column k
        assert torch.equal(frame[..., j], x[0, ..., s - j])
    assert not frame[..., : s - 4].any()


@pytest.mark.parametrize("table", P.TABLES)
def test_affine_frames_match_pil_with_torchvision_02_matrix(table):
    x = smooth_images(1, 3, 40, 36)
    canvas = x[0].numpy()
    mh = mw = 0
    if table == "imagenet":  # the published transform acts on the Resize(256) image, then CenterCrop(224)
        mh, mw = round(16 / 224 * 40), round(16 / 224 * 36)
        canvas = np.pad(canvas, ((0, 0), (mh, mh), (mw, mw)), mode="reflect")
    crop = lambda img: img[:, mh : mh + 40, mw : mw + 36]
    cases = {
        "translate": lambda v: pil_affine(canvas, Image.NEAREST, translate=(v, 0)),
        "rotate": lambda v: pil_affine(canvas, Image.BILINEAR, angle=v),
        "scale": lambda v: pil_affine(canvas, Image.BILINEAR, scale=v),
        "shear": lambda v: pil_affine(canvas, Image.BILINEAR, shear=v),
    }
    for name, ref in cases.items():
        out = P.sequence(name, x, [0], table)[0].numpy()
        values = P.parameters(name, table)[{"translate": "shift_px", "rotate": "angle_deg", "scale": "scale",
                                            "shear": "shear_deg"}[name]]  # fmt: skip
        for i in (0, 3, len(values) // 2, len(values) - 1):
            np.testing.assert_allclose(out[i], crop(ref(values[i])), atol=2e-5, err_msg=f"{name} frame {i}")


def test_rotate_zero_is_identity_and_turns_clockwise_about_the_torchvision_centre():
    x = smooth_images(2, 3, 32, 32)
    out = P.sequence("rotate", x, [0, 0], "cifar")
    torch.testing.assert_close(out[:, 15], x, atol=1e-5, rtol=0)  # angle i - 15 = 0
    c = (16.5, 16.5)  # torchvision 0.2: size * 0.5 + 0.5
    # a blob centred on the rotation centre (a centred symmetric pattern) stays put in every frame
    still = P.sequence("rotate", blob(32, 32, *c, sigma=3.0), [0], "cifar")[0]
    assert float((still - still[15]).abs().max()) < 0.03  # bilinear resampling error at the peak
    assert float((still - still[15]).abs().mean()) < 0.002
    # a blob 8 px right of the centre moves on the circle, clockwise on screen (y down) for positive angles
    seq = P.sequence("rotate", blob(32, 32, c[0] + 8, c[1]), [0], "cifar")[0]
    for i, angle in enumerate(range(-15, 16)):
        a = math.radians(angle)
        cx, cy = centroid(seq[i])
        assert cx == pytest.approx(c[0] + 8 * math.cos(a), abs=0.05)
        assert cy == pytest.approx(c[1] + 8 * math.sin(a), abs=0.05)


@pytest.mark.parametrize("table", P.TABLES)
def test_scale_frames_resize_a_centred_square_by_the_published_factors(table):
    size = 32 if table == "cifar" else 96
    c = size * 0.5 + 0.5  # the transform centre (torchvision 0.2); the centre row's pixel centre sits on it
    side = 15.0 if table == "cifar" else 41.0
    # a square of this side centred on c, its edges smoothed (Gaussian, sigma 1.5) so that sampling is accurate
    coords = torch.arange(size, dtype=torch.float64) + 0.5 - c
    edge = lambda t: 0.5 * (1 + torch.erf(t / (1.5 * math.sqrt(2.0))))
    profile = (edge(coords + side / 2) - edge(coords - side / 2)).float()
    x = (profile[:, None] * profile[None, :])[None, None]
    assert float(x[0, 0, int(c)].sum()) == pytest.approx(side, abs=1e-3)
    # each frame's width is the published factor times the side (one step is 0.3 | 1.0 px)
    out = P.sequence("scale", x, [0], table)[0, :, 0]
    widths = out[:, int(c)].sum(dim=-1)  # the row through the centre
    factors = P.parameters("scale", table)["scale"]
    for w, s in zip(widths.tolist(), factors):
        assert w == pytest.approx(s * side, abs=0.08)


def test_shear_moves_a_point_as_torchvision_02():
    c = (16.5, 16.5)
    seq = P.sequence("shear", blob(32, 32, c[0], c[1] + 6), [0], "cifar")[0]
    for i, shear in enumerate(range(-15, 16)):
        s = math.radians(shear)  # forward RSS = [[1, -sin s], [0, cos s]]
        cx, cy = centroid(seq[i])
        assert cx == pytest.approx(c[0] - math.sin(s) * 6, abs=0.05)
        assert cy == pytest.approx(c[1] + math.cos(s) * 6, abs=0.05)


@pytest.mark.parametrize("table", P.TABLES)
def test_tilt_moves_points_by_the_published_homography(table):
    size = 32 if table == "cifar" else 90
    margin = 0 if table == "cifar" else round(16 / 224 * size)
    full = size + 2 * margin  # the published tilt acts on the Resize(256) image before the crop
    degrees = P.parameters("tilt", table)["tilt_deg"]
    for px, py in ((size * 0.3, size * 0.35), (size * 0.7, size * 0.6)):
        seq = P.sequence("tilt", blob(size, size, px, py), [0], table)[0]
        for i in (0, 7, 15, 30):
            mat = published_tilt(degrees[i], full, full)  # cv2 pixel coordinates: centres at integers
            q = mat @ np.array([px - 0.5 + margin, py - 0.5 + margin, 1.0])
            cx, cy = centroid(seq[i])
            assert cx == pytest.approx(q[0] / q[2] + 0.5 - margin, abs=0.06)
            assert cy == pytest.approx(q[1] / q[2] + 0.5 - margin, abs=0.06)
    # even the untilted frame is the published one: a shrink by f / (1 + f) about (w/2, h/2) in cv2 coordinates
    f = math.hypot(32, 32)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:25, 8:25] = 1.0
    width = float(P.sequence("tilt", x, [0], "cifar")[0, 15, 0, 16].sum())
    assert width == pytest.approx(17 * f / (1 + f), abs=0.3) and width < 16.9


@pytest.mark.parametrize("name", ["translate", "rotate", "tilt", "scale", "shear", "zoom_blur", "brightness"])
def test_consecutive_frames_differ_by_one_small_step(name):
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=(32, 32), mode="bicubic").clamp(0, 1)
    # the centre, which stays inside the image in every frame (the published border is a hard 0 mask, so
    # whole border rows and columns switch on or off between some frames of scale and shear)
    out = P.sequence(name, x, [0] * 4, "cifar")[..., 8:24, 8:24]
    steps = (out[:, 1:] - out[:, :-1]).abs().mean(dim=(0, 2, 3, 4))
    span = float((out[:, -1] - out[:, 0]).abs().mean())
    assert float(steps.max()) < span / 4
    assert float(steps.max()) < 4 * float(steps.min())


# ------------------------------------------------------------------------------------- photometric


def test_brightness_steps_the_hsv_value_and_keeps_hue_and_saturation():
    g = torch.Generator().manual_seed(3)
    x = 0.25 + 0.5 * torch.rand(2, 3, 8, 8, generator=g)  # values 0.25..0.75: no clipping at ±0.225
    out = P.sequence("brightness", x, [0, 0], "cifar")
    value = out.amax(dim=2)
    shifts = torch.tensor(P.parameters("brightness", "cifar")["value_shift"]).view(1, -1, 1, 1)
    torch.testing.assert_close(value, x.amax(dim=1, keepdim=True) + shifts, atol=1e-6, rtol=0)
    torch.testing.assert_close((value[:, 1:] - value[:, :-1]), torch.full_like(value[:, 1:], 0.015), atol=1e-6, rtol=0)
    saturation = (value - out.amin(dim=2)) / value
    torch.testing.assert_close(saturation, saturation[:, :1].expand_as(saturation), atol=1e-5, rtol=0)
    black = P.sequence("brightness", torch.zeros(1, 3, 2, 2), [0], "imagenet")[0]
    assert torch.allclose(black[20], torch.full_like(black[20], 0.1))  # v = 0 -> grey v' = (20 - 15) * 0.02


@pytest.mark.parametrize("table", P.TABLES)
def test_noise_frames_have_the_published_scale(table):
    x = torch.full((2, 1, 48, 48), 0.5)
    for name in ("gaussian_noise", "shot_noise", "speckle_noise"):
        out = P.sequence(name, x, [5, 6], table)
        assert torch.equal(out[:, 0], x)  # the first frame is the clean image
        noisy = out[:, 1:] - 0.5
        p = P.parameters(name, table)
        expected = {
            "gaussian_noise": p.get("sigma"),
            "shot_noise": math.sqrt(0.5 * p.get("photons", 1)) / p.get("photons", 1),
            "speckle_noise": 0.5 * p.get("sigma", 0),
        }[name]
        assert float(noisy.std()) == pytest.approx(expected, rel=0.03), name
        assert abs(float(noisy.mean())) < 0.1 * expected
        assert not torch.equal(out[:, 1], out[:, 2])  # fresh noise every frame


def test_motion_blur_kernel_is_imagemagick():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 16, 16] = 1.0
    out = P.sequence("motion_blur", x, [0], "cifar")[0, :, 0]
    width, sigma = 13, 1.8  # 2 * ceil(radius 6) + 1 one-sided taps exp(-i^2 / 2 sigma^2)
    k = torch.tensor([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)])
    k = k / k.sum()
    # frame 20: angle 0, offsets (+i, 0): output(p) = sum_i k_i x(p + (i, 0)) -> the impulse spreads left
    torch.testing.assert_close(out[20, 16, 16 - width + 1 : 17].flip(0), k, atol=1e-6, rtol=0)
    assert float(out[20].sum()) == pytest.approx(1.0, abs=1e-5)
    # frame 10: angle -90, offsets (0, -i) -> the impulse spreads downwards
    torch.testing.assert_close(out[10, 16 : 16 + width, 16], k, atol=1e-6, rtol=0)
    flat = P.sequence("motion_blur", torch.full((1, 3, 16, 16), 0.3), [0], "imagenet")
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))  # edge pixels repeat: constants stay constant


def test_gaussian_blur_kernel_is_scipy_with_published_truncate():
    x = torch.zeros(1, 1, 41, 41)
    x[..., 20, 20] = 1.0
    out = P.sequence("gaussian_blur", x, [0], "imagenet")[0, :, 0]
    for i in (0, 15, 30):
        sigma = 0.25 + 0.035 * i
        radius = int(6.0 * sigma + 0.5)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * taps**2 / sigma**2)
        k = k / k.sum()
        expected = torch.zeros(41, 41, dtype=torch.float64)
        expected[20 - radius : 21 + radius, 20 - radius : 21 + radius] = k[:, None] * k[None, :]
        torch.testing.assert_close(out[i].double(), expected, atol=1e-6, rtol=0)


def test_zoom_blur_is_a_running_mean_of_zooms():
    x = smooth_images(1, 3, 32, 32)
    out = P.sequence("zoom_blur", x, [0], "cifar")[0]
    torch.testing.assert_close(out[0], x[0])
    flat = P.sequence("zoom_blur", torch.full((1, 1, 16, 16), 0.4), [0], "cifar")
    torch.testing.assert_close(flat, torch.full_like(flat, 0.4))
    drift = (out - x[0]).abs().mean(dim=(1, 2, 3))
    assert torch.all(drift[1:] > drift[:-1])


def test_snow_on_black_follows_the_published_blend():
    out = P.sequence("snow", torch.zeros(2, 3, 32, 32), [1, 2], "cifar")
    # z = 0.85 * 0 + 0.15 * max(0, gray * 1.5 + 0.5) = 0.075 where no flake falls
    assert float(out.min()) == pytest.approx(0.075, abs=1e-6)
    assert float((out > 0.2).float().mean()) > 0.01  # flakes
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out[:, :, 0], out[:, :, 1])  # the snow layer is grey
    gray = P.sequence("snow", torch.zeros(1, 1, 32, 32), [1], "cifar")
    torch.testing.assert_close(gray, out[:1, :, :1])


@pytest.mark.slow
@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_full_size_imagenet_sequences(name):
    x = smooth_images(2, 3, 224, 224)
    out = P.sequence(name, x, [3, 4], P.table_for(224, 224))
    assert out.shape == (2, P.frames(name, "imagenet"), 3, 224, 224)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(P.sequence(name, x[1:], [4], "imagenet"), out[1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("table", ["cifar", "imagenet"])
def test_first_frame_label_matches_the_frames(table):
    """parameters()['first_frame'] says what sequence()'s frame 0 is: the clean image (noise, zoom blur) or not."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for name in P.PERTURBATIONS:
        frame0 = P.sequence(name, x, [3], table)[:, 0]
        clean = bool(torch.allclose(frame0, x, atol=1e-6))
        assert (P.parameters(name, table)["first_frame"] == "clean") == clean, name
