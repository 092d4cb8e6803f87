"""The pooling fit in bounded memory: LOBPCG in chunks of output cells gives the one-block result, the plan
refuses up front what cannot fit, and B is left as it was."""

from __future__ import annotations

import pytest
import torch

from poolcli.errors import BadInputError
from poolcli.learn.eigen import locality_penalty, locality_penalty_rows, solve_lobpcg, solve_lobpcg_chunked
from poolcli.learn.memory import parse_size, plan_fit
from poolcli.learn.pooling import fit_pooling

from .conftest import CNN


def _problem(n: int = 120, r: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, r, generator=g, dtype=torch.float64)
    X = torch.randn(n, 3 * n, generator=g, dtype=torch.float64)
    return D, X @ X.t() / (3 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


def test_penalty_rows_are_rows_of_the_penalty():
    full = locality_penalty((12, 10), (6, 5))
    assert torch.equal(full[7:19], locality_penalty_rows((12, 10), (6, 5), range(7, 19)))


@pytest.mark.parametrize("chunk", [1, 7, 29])
def test_chunks_give_the_one_block_result(chunk):
    D, B = _problem()
    one = solve_lobpcg(D, B, locality_penalty((12, 10), (6, 5)), 1.0, 2, tol=1e-10)
    parts = solve_lobpcg_chunked(D, B, (12, 10), (6, 5), 1.0, 2, chunk=chunk, tol=1e-10)
    assert torch.allclose(one.values, parts.values, rtol=1e-12, atol=1e-12)
    a = one.vectors / one.vectors.norm(dim=1, keepdim=True)
    b = parts.vectors / parts.vectors.norm(dim=1, keepdim=True)
    assert float((1 - (a * b).sum(1).abs()).max()) < 1e-12


def test_fit_leaves_b_unchanged_and_small_budgets_chunk():
    D, B = _problem(n=144)
    before = B.clone()
    free = fit_pooling(D, B, (12, 12), alpha=2.0, solver="lobpcg")
    assert torch.equal(B, before)
    plan = plan_fit(144, 36, 2, 30, "lobpcg", 2 << 20)
    assert 1 <= plan.chunk < 36
    tight = fit_pooling(D, B, (12, 12), alpha=2.0, solver="lobpcg", max_memory=2 << 20)
    assert torch.allclose(free.P, tight.P, atol=1e-6) and torch.equal(B, before)


def test_plan_refuses_with_the_options_that_help():
    with pytest.raises(BadInputError, match="--stride.*--eigvecs.*--max-memory"):
        plan_fit(12544, 3136, 2, 640, "lobpcg", 2 << 30)  # the 112×112 site of a 224-px ResNet in 2 GiB
    plan = plan_fit(12544, 3136, 2, 640, "lobpcg", 8 << 30)
    assert plan.peak_bytes <= 8 << 30 and plan.chunk >= 1


def test_parse_size():
    assert parse_size("8G") == 8 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("1000") == 1000
    for bad in ("", "x", "-1G", "0"):
        with pytest.raises(BadInputError, match="--max-memory"):
            parse_size(bad)


def test_cli_refuses_before_collecting(cli, tmp_path):
    code, _, err = cli("fit-pooling", CNN, "--site", "@down1", "--max-memory", "4M", "-o", tmp_path / "p.safetensors")
    assert code == 2 and "memory budget is 4 MiB" in err and not list(tmp_path.iterdir())


def test_collect_refuses_statistics_that_cannot_fit(cli, tmp_path):
    """An early site at a large input size (the fixture at 224 px: N = 50176, an 18.8 GiB Gram) is refused
    before the pass, naming the size and what helps; within the budget the same command runs."""
    out = tmp_path / "s.safetensors"
    args = ("collect", CNN, "--site", "@down1", "--data", "digits:train", "--limit", "60", "-o", out)
    code, _, err = cli(*args, "--input-size", "1x224x224", "--max-memory", "8G")
    assert code == 2 and "N=50176" in err and "--input-size" in err and not list(tmp_path.iterdir())
    code, _, err = cli(*args, "--max-memory", "2M")
    assert code == 2 and "memory budget is 2 MiB" in err
    assert cli(*args, "--max-memory", "1G")[0] == 0 and out.exists()
