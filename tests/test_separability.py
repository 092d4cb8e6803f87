"""Separability of embeddings (seed 001 eq. 8 and Fisher's tr(S_w⁻¹ S_b)) from the streamed statistics,
against the definitions computed directly in float64."""

from __future__ import annotations

import pytest
import torch

from poolcli.metrics.separability import Separability


def _direct(z, y):
    classes = y.unique()
    means = torch.stack([z[y == c].mean(0) for c in classes])
    centre = means.mean(0)
    q = len(classes)
    s_b = sum(float(((m - centre) ** 2).sum()) for m in means) / q
    s_w = sum(float(((z[y == c] - means[i]) ** 2).sum(1).mean()) for i, c in enumerate(classes)) / q
    Sb = sum(torch.outer(m - centre, m - centre) for m in means) / q
    Sw = sum((z[y == c] - means[i]).t() @ (z[y == c] - means[i]) / int((y == c).sum()) for i, c in enumerate(classes))
    Sw = Sw / q
    return s_b / s_w, float(torch.trace(torch.linalg.solve(Sw, Sb)))


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_separability_equals_the_definitions(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (300,), generator=g)
    z = torch.randn(4, 12, generator=g, dtype=torch.float64)[y] + torch.randn(300, 12, generator=g, dtype=torch.float64)
    sep = Separability(torch.bincount(y, minlength=4))
    for part in torch.arange(300).split(37):
        sep.update(z[part], y[part])
    r = sep.result()
    eq8, lda = _direct(z, y)
    assert r["eq8_ratio"] == pytest.approx(eq8, rel=1e-10)
    assert r["lda_trace"] == pytest.approx(lda, rel=1e-8) and r["lda_undefined"] is None


def test_more_dimensions_than_images_leaves_fisher_undefined():
    g = torch.Generator().manual_seed(5)
    y = torch.arange(20) % 2
    z = torch.randn(20, 64, generator=g)
    sep = Separability(torch.bincount(y))
    sep.update(z, y)
    r = sep.result()
    assert r["lda_trace"] is None and "20 images for 64 dimensions" in r["lda_undefined"]
    assert r["eq8_ratio"] > 0  # the traces are defined whatever the dimension


def test_evaluate_separability_at_a_site(cli):
    import json

    from .conftest import CNN

    code, out, err = cli("evaluate", CNN, "--metrics", "separability", "--embed-site", "@down3", "--json")
    assert code == 0, err
    s = json.loads(out)["results"][0]["separability"]
    assert s["dim"] == 512 and s["eq8_ratio"] > 0 and "stage3.0" in s["embedding"]
