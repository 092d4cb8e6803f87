"""L2 → PCA-whitening → L2 against scikit-learn's PCA(whiten=True), saved and reused bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from poolcli.errors import BadInputError
from poolcli.metrics.whitening import fit_whitening, load_whitening, save_whitening

from .conftest import CNN


def test_whitening_equals_sklearn_pca_whiten():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g, dtype=torch.float64) @ torch.randn(20, 20, generator=g, dtype=torch.float64)
    y = torch.randn(50, 20, generator=g, dtype=torch.float64)
    w = fit_whitening(x, dim=8)
    xn = torch.nn.functional.normalize(x, dim=1).numpy()
    ref = PCA(n_components=8, whiten=True, svd_solver="full").fit(xn)
    ours = w.apply(y).double()
    theirs = torch.nn.functional.normalize(
        torch.from_numpy(ref.transform(torch.nn.functional.normalize(y, dim=1).numpy())), dim=1
    )
    signs = torch.sign((ours * theirs).sum(0))  # components are defined up to sign: align per component
    assert torch.allclose(ours, theirs * signs, atol=1e-5)
    white = (torch.nn.functional.normalize(x, dim=1) - w.mean) @ w.projection.t()
    assert torch.allclose(torch.cov(white.t()), torch.eye(8, dtype=torch.float64), atol=1e-8)


def test_bad_dimensions_are_refused():
    with pytest.raises(BadInputError, match="--dim"):
        fit_whitening(torch.randn(10, 4), dim=5)


def test_saved_whitening_is_reused_exactly(tmp_path, cli):
    path = tmp_path / "w.safetensors"
    base = ("evaluate", CNN, "--metrics", "retrieval", "--max-per-class", "10", "--json")
    code, out, err = cli(*base, "--whiten", "digits:train", "--dim", "32", "--save-whitening", path)
    assert code == 0, err and path.exists()
    fitted = json.loads(out)["results"][0]["retrieval"]
    code, out, err = cli(*base, "--whiten", path)
    reused = json.loads(out)["results"][0]["retrieval"]
    assert fitted["map_at_r"] == reused["map_at_r"] and reused["embedding_dim"] == 32
    assert fitted["whitening"]["fitted_on"] == "digits:train" and reused["whitening"]["file"] == str(path)
    w = load_whitening(path)
    save_whitening(tmp_path / "again.safetensors", w, {})
    assert torch.equal(load_whitening(tmp_path / "again.safetensors").projection, w.projection)
    code, _, err = cli(*base, "--save-whitening", tmp_path / "x.safetensors")
    assert code == 2 and "--whiten DATA" in err
    code, _, err = cli(*base, "--whiten", CNN)
    assert code == 2 and "not a poolcli whitening file" in err
