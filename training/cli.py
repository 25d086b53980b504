"""`dfd-train`: the training tool's one command line, a subcommand per stage.

    dfd-train prepare VIDEOS_OR_MANIFEST DATA   # face crops + metadata, with the worker's code
    dfd-train synth DATA                        # self-blended pseudo-fakes from the real crops
    dfd-train train DATA RUN                    # fine-tune ConvNeXt V2 (HF Trainer)
    dfd-train evaluate RUN/model DATA REPORT    # metrics, curves, t-SNE, thresholds, report.md
    dfd-train export RUN/model DATA BUNDLE      # ONNX + parity + the worker's model bundle
    dfd-train demo                              # build (or find) the cached demo bundle
    dfd-train init-bundle OUT                   # an untrained bundle (random weights)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where the help text already says it or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


COMMANDS = {
    "prepare": ("training.prepare", "labelled videos -> face crops + metadata table"),
    "synth": ("training.synth", "add pseudo-fakes made from real crops: self-blends or face swaps"),
    "train": ("training.train", "fine-tune ConvNextV2ForImageClassification"),
    "evaluate": ("training.evaluate", "metrics, plots, threshold tuning, t-SNE, report"),
    "export": ("training.export", "ONNX export, parity check, model bundle"),
    "demo": ("training.demo", "build or reuse the cached DEMO bundle"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["init-bundle"]:
        from training.untrained_bundle import main as init_bundle

        return init_bundle(argv[1:])
    parser = argparse.ArgumentParser(prog="dfd-train", description="Prepare data, train, evaluate and export deepfake classifiers for the worker.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, including the worker's (ONNX sessions, decoding)")
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the command asked for imports its module (torch, OpenCV, PyAV: seconds), so
    # `dfd-train --help` and a mistyped command answer at once.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    sub.add_parser("init-bundle", help="an untrained bundle (random weights): see `dfd-train init-bundle -h`")
    args = parser.parse_args(argv)
    from training.dataset import DataError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the worker's INFO lines (ONNX sessions opened, ...) are noise in a training run
        logging.getLogger("worker").setLevel(logging.WARNING)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except DataError as exc:
        print(f"dfd-train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
