"""CLI contract: JSON only on stdout, one-line errors, exit codes, --debug tracebacks."""

from __future__ import annotations

import json

from .conftest import CNN, RESNET, run_subprocess


def test_inspect_json_pipes_cleanly():
    proc = run_subprocess("inspect", "tv:resnet18", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert doc["schema"] == "poolcli.inspect/1" and doc["aliases"]["@global"] == "avgpool"
    assert "avgpool" in proc.stderr  # the human table went to stderr


def test_evaluate_fixtures_json(cli):
    code, out, err = cli("evaluate", CNN, RESNET, "--data", "digits:test", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["n"] for r in doc["results"]] == [360, 360]
    assert all(r["top1"] > 0.95 for r in doc["results"]) and "top1" in doc["definitions"]


def test_evaluate_class_subset_and_limit(cli):
    code, out, _ = cli(
        "evaluate", CNN, "--data", "digits:test", "--classes", "0-4", "--limit", "50", "--json", "-b", "16"
    )
    assert code == 0 and json.loads(out)["results"][0]["n"] == 50


def test_unknown_model_suggests(cli):
    code, out, err = cli("inspect", "timm:resnet181")
    assert code == 2 and out == "" and "unknown timm model" in err and "resnet18" in err


def test_unknown_site(cli):
    code, _, err = cli("inspect", CNN, "--site", "@down9")
    assert code == 2 and "@down9" in err and "@down3" in err
    code, _, err = cli("inspect", CNN, "--site", "stage7.conv")
    assert code == 2 and "unknown site" in err


def test_site_filter(cli):
    code, out, _ = cli("inspect", CNN, "--site", "@down3", "--json")
    doc = json.loads(out)
    assert code == 0 and [s["path"] for s in doc["sites"]] == ["stage3.0"]


def test_empty_dataset(cli):
    code, _, err = cli("evaluate", CNN, "--data", "digits:test", "--classes", "42")
    assert code == 2 and "empty" in err


def test_bad_usage_is_exit_2(cli):
    code, _, err = cli("evaluate", CNN, "--batch-size", "zero")
    assert code == 2


def test_debug_shows_traceback(cli):
    code, _, err = cli("inspect", "timm:nonexistent_model", "--debug")
    assert code == 2 and "Traceback" in err


def test_interrupt_is_130(cli, monkeypatch):
    import poolcli.api as ev

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    code, _, err = cli("evaluate", CNN)
    assert code == 130 and "interrupted" in err


def test_unexpected_failure_is_exit_1_one_line(cli, monkeypatch):
    import poolcli.api as ev

    def broken(*a, **k):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(ev, "evaluate", broken)
    code, _, err = cli("evaluate", CNN)
    assert code == 1 and "ZeroDivisionError" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_version_names_the_kernel_path(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("poolcli ") and "ppool: " in out


def test_help_and_module_entry():
    proc = run_subprocess("--help")
    assert proc.returncode == 0 and "inspect" in proc.stdout and "evaluate" in proc.stdout


def test_no_command_shows_help_without_an_empty_error(cli):
    code, out, err = cli()
    assert code == 2 and "Usage" in out + err and "error" not in err


def test_interrupt_line_is_an_error_line(cli, monkeypatch):
    import poolcli.api as ev

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    code, _, err = cli("evaluate", CNN)
    assert code == 130 and err.strip().splitlines() == [err.strip()] and err.startswith("error: interrupted")
