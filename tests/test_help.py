"""Every console script: every command and option has help text, and options with a default say it.

The parsers are captured from the scripts' own `main` (parse_args is intercepted), so a new
command or option cannot slip past this walk.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# `dfd-worker run` hands its arguments to the service's own parser.
ENTRY_POINTS = {**SCRIPTS, "dfd-worker run": "worker.service.runner:main"}


class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def _capture_parser(entry: str, monkeypatch, argv: list[str]) -> argparse.ArgumentParser:
    module, func = entry.split(":")
    main = getattr(importlib.import_module(module), func)

    def intercept(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercept)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", intercept)
    with pytest.raises(_Captured) as caught:
        main(argv)
    return caught.value.parser


def _parsers(entry: str, monkeypatch):
    """The script's parser, and for each command the parser `main([command])` builds (a script
    may build a command's options only when that command is asked for, to start fast)."""
    top = _capture_parser(entry, monkeypatch, [])
    yield "", top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                try:
                    full = _capture_parser(entry, monkeypatch, [name])
                except BaseException:  # a command that hands over to a parser of its own
                    continue
                for sub_action in full._actions:
                    if isinstance(sub_action, argparse._SubParsersAction) and name in sub_action.choices:
                        yield name, sub_action.choices[name]


def _walk(parser: argparse.ArgumentParser, path: str):
    """(where, action or None for a command, help text, whether the formatter adds defaults)"""
    shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", None, helps.get(name), False
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action, action.help, shows_defaults


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_every_command_and_option_has_help_with_its_default(script, monkeypatch):
    missing, no_default = [], []
    walked = [row for command, parser in _parsers(ENTRY_POINTS[script], monkeypatch)
              for row in (_walk(parser, script) if not command else _walk(parser, f"{script} {command}"))]
    for where, action, text, shows_defaults in dict.fromkeys(walked):
        name = "/".join(action.option_strings) or action.dest if action else "(command)"
        if action is not None and action.help == argparse.SUPPRESS:
            continue
        if not text or not text.strip():
            missing.append(f"{where}: {name}")
            continue
        if action is None or not action.option_strings or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._VersionAction)):
            continue
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and not shows_defaults:
            no_default.append(f"{where}: {name} (default {action.default!r})")
    assert not missing, "commands/options without help: " + ", ".join(missing)
    assert not no_default, "options whose help does not say their default: " + ", ".join(no_default)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_answers_without_importing_the_heavy_stack(script):
    """`--help` must not import Kafka, Redis, ONNX Runtime, torch or PyAV: they cost seconds."""
    module, func = SCRIPTS[script].split(":")
    code = (
        "import sys, contextlib, io\n"
        f"from {module} import {func} as main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "heavy = [m for m in ('kafka', 'redis', 'onnxruntime', 'torch', 'av', 'transformers', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{script} --help imported {out.stdout.strip()}"
