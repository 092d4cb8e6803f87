"""The real-photo path end to end: folder splits, class names kept and compared, lineage, top-5 only where
it means something, one output extension, progress a person can follow, the same model options everywhere."""

from __future__ import annotations

import json

import pytest

from poolcli.io.tensorfile import read_metadata

from .conftest import CNN


def test_a_named_split_must_exist(photos, cli):
    code, _, err = cli("evaluate", CNN, "--data", f"folder:{photos}:test", "--input-size", "1x32x32")
    assert code == 2 and "no 'test' split" in err and "train, val" in err
    code, _, err = cli("evaluate", CNN, "--data", f"folder:{photos}")  # evaluate's default split is test
    assert code == 2 and f"folder:{photos}:val" in err


def test_finetune_keeps_class_names_and_lineage_and_evaluate_compares_them(photos, tmp_path, cli):
    out = tmp_path / "ft.safetensors"
    base = ["--data", f"folder:{photos}:train", "--input-size", "3x32x32"]
    code, _, err = cli("finetune", "poolcli:convnet4", *base, "--in-chans", "3", "--epochs", "1", "-o", out)
    assert code == 2 and "has 2 classes but" in err and "--num-classes 2" in err
    code, _, err = cli(
        "finetune", "poolcli:convnet4", *base, "--in-chans", "3", "--num-classes", "2", "--epochs", "1", "-o", out
    )
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["classes"] == ["city", "garden"] and meta["preprocess"]["style"] == "timm"
    code, stdout, err = cli("evaluate", out, "--data", f"folder:{photos}:val", "--json")
    assert code == 0, err
    result = json.loads(stdout)["results"][0]
    assert "top5" not in result and result["n"] == 12 and result["preprocess"]["crop_pct"] == 0.875
    # the digits model was scored on photos without a word: now its class names are compared
    code, _, err = cli("evaluate", CNN, "--data", f"folder:{photos}:val")
    assert code == 2 and "other classes" in err and "--allow-class-mismatch" in err
    code, _, err = cli("evaluate", CNN, "--data", f"folder:{photos}:val", "--allow-class-mismatch")
    assert code == 0 and "note:" in err
    # fine-tuning the fine-tuned model: the parent's facts are lineage, not this model's
    out2 = tmp_path / "ft2.safetensors"
    assert cli("-q", "finetune", out, "--data", f"folder:{photos}:train", "--epochs", "1", "-o", out2)[0] == 0
    extra = read_metadata(out2)["extra"]
    assert set(extra) == {"origin", "finetune", "lineage"} and len(extra["lineage"]) == 2
    assert extra["origin"]["weights"] == "finetuned" and extra["lineage"][0]["origin"]["weights"] == "random"
    assert extra["lineage"][1]["finetune"]["epochs"] == 1 and "final" in extra["lineage"][1]["finetune"]


def test_fixture_facts_move_to_lineage(tmp_path, cli):
    out = tmp_path / "ft.safetensors"
    assert cli("-q", "finetune", CNN, "--epochs", "1", "--limit", "64", "-o", out)[0] == 0
    parent = read_metadata(CNN)["extra"]
    extra = read_metadata(out)["extra"]
    assert not (set(parent) - {"lineage"}) & (set(extra) - {"finetune", "lineage", "origin"})
    assert all(extra["lineage"][-1][k] == v for k, v in parent.items())


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", str(CNN), "--swap", "@global=gem", "-o", "{T}/x.pt"],
        ["collect", str(CNN), "--site", "@down3", "-o", "{T}/s.pt"],
        ["finetune", str(CNN), "--epochs", "1", "-o", "{T}/f.pth"],
        ["stats", "merge", "{T}/a", "{T}/b", "-o", "{T}/m.bin"],
    ],
)
def test_one_output_extension_enforced_up_front(argv, tmp_path, cli):
    code, _, err = cli(*[a.replace("{T}", str(tmp_path)) for a in argv])
    assert code == 2 and ".safetensors" in err and not list(tmp_path.iterdir())


def test_log_progress_lines_with_rate_and_rank_zero_only(monkeypatch):
    import io

    from rich.console import Console

    from poolcli import progress
    from poolcli.cli.common import CliReporter

    buf = io.StringIO()
    previous = progress.set_reporter(CliReporter(Console(file=buf, force_terminal=False, width=200), interval=0))
    try:
        with progress.task("collect stage3.0", 100) as advance:
            for _ in range(4):
                advance(25)
        lines = buf.getvalue().splitlines()
        assert lines[0].startswith("collect stage3.0: 25/100 images (25.0%)") and "images/s" in lines[0]
        assert "s left" in lines[0] and lines[-1].endswith("(done)") and "100/100" in lines[-1]
        monkeypatch.setenv("RANK", "1")
        buf.truncate(0)
        buf.seek(0)
        with progress.task("collect stage3.0", 100) as advance:
            advance(50)
        assert buf.getvalue() == ""
    finally:
        progress.set_reporter(previous)


def test_collect_reports_its_channel_scale_pass_and_main_pass():
    import poolcli

    from .conftest import reporting

    seen: dict[str, int] = {}
    with reporting(lambda d, n: seen.__setitem__(d, seen.get(d, 0) + n)):
        poolcli.collect(str(CNN), "@down3", "digits:train", limit=200, device="cpu")
    assert seen == {"collect: channel scale pass": 200, "collect stage3.0": 200}


MODEL_OPTIONS = ("--weights", "--pretrained", "--use-ema", "--num-classes", "--in-chans", "--input-size")
PREPROCESS_OPTIONS = ("--crop-pct", "--interpolation", "--mean", "--std")


@pytest.mark.parametrize("command", ["inspect", "collect", "fit-pooling", "convert", "finetune", "evaluate"])
def test_every_model_command_takes_the_same_model_options(command, cli):
    code, out, err = cli(command, "--help")
    text = out + err
    assert code == 0
    for option in MODEL_OPTIONS + PREPROCESS_OPTIONS:
        assert option in text, (command, option)
    assert "<bool>" not in text  # flags show no value placeholder


def test_choices_and_metavars_in_help(cli):
    _, out, _ = cli("convert", "--help")
    assert "SITE=OP" in out and "list[str]" not in out
    _, out, _ = cli("collect", "--help")
    assert "<input|output|destrid" in out  # the choices (folded at 80 columns)
    code, _, err = cli("collect", str(CNN), "--site", "@down3", "--at", "sideways", "-o", "x.safetensors")
    assert code == 2 and "--at" in err and len(err.strip().splitlines()) == 1


def test_site_paths_are_not_broken_in_narrow_tables(monkeypatch, cli):
    monkeypatch.setenv("COLUMNS", "80")
    code, _, err = cli("inspect", "tv:resnet18", "--input-size", "3x64x64")
    assert code == 0 and "layer2.0.downsample.0" in err and "layer4.0.conv1" in err
