"""dfd-train's command line: every option explained with its default, clear errors instead of tracebacks."""

from __future__ import annotations

import argparse

import pytest

from training import cli


def _parsers():
    """(name, parser) for dfd-train and each subcommand, as the real CLI builds them."""
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        captured["root"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            cli.main(["prepare", "x", "y"])
    finally:
        argparse.ArgumentParser.parse_args = original
    root = captured["root"]
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return [("dfd-train", root), *sub.choices.items()]


def _init_bundle_parser(monkeypatch):
    from training import untrained_bundle

    seen = {}

    def stop(self, args=None, namespace=None):
        seen["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        untrained_bundle.main(["out"])
    return seen["parser"]


def test_every_option_of_every_command_has_help_and_shows_its_default(monkeypatch):
    parsers = _parsers() + [("init-bundle", _init_bundle_parser(monkeypatch))]
    assert {name for name, _ in parsers} >= {"dfd-train", "prepare", "synth", "train", "evaluate", "export", "demo", "init-bundle"}
    for name, parser in parsers:
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            if not action.option_strings or action.default in (None, False):
                continue
            shown = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in shown, f"{name} {action.option_strings}: help does not show the default ({shown!r})"


@pytest.mark.parametrize("command, option", [("train", "--epochs"), ("train", "--lr"), ("evaluate", "--aggregation"),
                                             ("export", "--name"), ("synth", "--seed")])
def test_help_output_names_the_defaults(command, option, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "-h"])
    out = " ".join(capsys.readouterr().out.split())
    assert option in out and "(default:" in out


def test_init_bundle_help_has_the_right_name(capsys):
    with pytest.raises(SystemExit):
        cli.main(["init-bundle", "-h"])
    out = capsys.readouterr().out
    assert out.startswith("usage: dfd-train init-bundle") and "(default: atto)" in out


def test_report_to_a_tracker_that_is_not_installed_is_a_clear_error(prepared, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    code = cli.main(["train", str(prepared), str(tmp_path / "run"), "--max-steps", "1", "--report-to", "wandb"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--report-to wandb: the 'wandb' package is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_bad_filter_is_a_clear_error(prepared, tmp_path, capsys):
    assert cli.main(["train", str(prepared), str(tmp_path / "run"), "--exclude", "colour=red"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_prepare_prints_no_onnx_session_lines(labelled_clips, tmp_path):
    import os
    import subprocess
    import sys

    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])  # this checkout's code, in the child process too
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{labelled_clips / 'real' / 'clip0.mp4'},real\n")
    quiet = subprocess.run([sys.executable, "-m", "training.cli", "prepare", str(manifest), str(tmp_path / "a"), "--input-size", "48"],
                           capture_output=True, text=True, env=os.environ | {"PYTHONPATH": root}, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "prepared 1 video(s)" in quiet.stdout and "onnx session" not in quiet.stderr
    verbose = subprocess.run([sys.executable, "-m", "training.cli", "-v", "prepare", str(manifest), str(tmp_path / "b"),
                              "--input-size", "48"], capture_output=True, text=True, env=os.environ | {"PYTHONPATH": root},
                             timeout=300)
    assert verbose.returncode == 0 and "onnx session" in verbose.stderr  # still there with -v
