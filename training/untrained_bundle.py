"""A model bundle around a randomly initialised ConvNeXt V2, for tests and first runs.

Until a model is trained, the worker still needs a real network of the right shape to run
the whole path. This builds one offline (no model hub), exports it to ONNX with a dynamic
batch axis, checks ONNX Runtime agrees with torch, and writes a bundle marked untrained,
so every verdict made with it says its scores mean nothing.

    python -m training.untrained_bundle OUT_DIR [--size atto] [--input-size 224] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from worker.models.bundle import ModelBundle, write_bundle

# ConvNeXt V2 family (Woo et al., 2023): depths and widths per stage.
SIZES = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABELS = ["real", "fake"]
PARITY_TOLERANCE = 1e-3  # largest logit difference allowed between torch and ONNX Runtime


# Per-crop input standardisation (demo recipe v5): the config key that turns it on, and the
# variance floor, in units of the normalised input (a std of 0.01 is about half a grey level).
STANDARDISE_KEY = "dfd_input_standardisation"
STANDARDISE_EPS = 1e-4


def standardise(pixel_values, eps: float = STANDARDISE_EPS):
    """Each crop's channels to mean 0 and std 1 over its own pixels: (x - mean) / sqrt(var + eps).

    A global per-channel gain and offset of a crop (a colour cast, white balance, exposure)
    cancels out; what differs between parts of the crop (a blend's colour mismatch inside its
    mask against outside) stays. Written with plain tensor ops so the ONNX graph carries it."""
    mean = pixel_values.mean(dim=(2, 3), keepdim=True)
    centred = pixel_values - mean
    var = (centred * centred).mean(dim=(2, 3), keepdim=True)
    return centred / (var + eps).sqrt()


def add_input_standardisation(model, eps: float = STANDARDISE_EPS):
    """Make `model` standardise its input per crop (`standardise`) before its first layer, and
    record that in its config, so a saved checkpoint reloaded with `load_trained` does it too and
    the exported ONNX graph contains it: the worker's preprocessing and the bundle format stay as
    they are. A forward pre-hook on the embeddings, so every path into the network (the
    classifier's forward, `model.convnextv2(...)`) goes through it. Idempotent; returns `model`."""
    from functools import partial

    embeddings = model.convnextv2.embeddings
    if not getattr(embeddings, "_dfd_standardised", False):
        embeddings.register_forward_pre_hook(partial(_standardise_hook, eps=eps))
        embeddings._dfd_standardised = True
    setattr(model.config, STANDARDISE_KEY, {"eps": eps})
    return model


def _standardise_hook(module, args, eps):
    return (standardise(args[0], eps),) + tuple(args[1:])


def restore_input_standardisation(model):
    """Re-attach the standardisation a saved config records (no-op for models without it)."""
    recorded = getattr(model.config, STANDARDISE_KEY, None)
    if recorded:
        add_input_standardisation(model, float(recorded.get("eps", STANDARDISE_EPS)))
    return model


def load_trained(model_dir):
    """A ConvNextV2ForImageClassification checkpoint, in eval mode, with what its config records
    (input standardisation) attached: every loader of a trained model goes through this."""
    from transformers import ConvNextV2ForImageClassification

    return restore_input_standardisation(ConvNextV2ForImageClassification.from_pretrained(model_dir).eval())


def build_model(size: str = "atto", seed: int = 0, standardise_input: bool = False):
    """A ConvNextV2ForImageClassification with two labels, weights drawn from `seed`; with
    `standardise_input`, the per-crop input standardisation in front (`add_input_standardisation`)."""
    import torch
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    if size not in SIZES:
        raise ValueError(f"unknown ConvNeXt V2 size {size!r}: one of {', '.join(SIZES)}")
    depths, hidden_sizes = SIZES[size]
    config = ConvNextV2Config(
        depths=depths,
        hidden_sizes=hidden_sizes,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(seed)
    model = ConvNextV2ForImageClassification(config).eval()
    return add_input_standardisation(model) if standardise_input else model


def export_onnx(model, path: Path, input_size: int) -> None:
    """ONNX with input `pixel_values` [N,3,S,S] and output `logits` [N,2], N dynamic."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    example = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and gives a clean graph;
        # the tracer's note about a shape check in transformers is harmless here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            Logits(model).eval(),
            (example,),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def parity(model, onnx_path: Path, input_size: int, seed: int = 0, batch: int = 3) -> float:
    """Largest absolute logit difference between torch and ONNX Runtime on a random batch."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).standard_normal((batch, 3, input_size, input_size)).astype(np.float32)
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.abs(got - expected).max())


def build_untrained_bundle(out_dir, size: str = "atto", input_size: int = 224, seed: int = 0) -> ModelBundle:
    """Write an untrained ConvNeXt V2 bundle into `out_dir` and return it (loaded and verified)."""
    import torch

    model = build_model(size, seed)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp, "model.onnx")
        export_onnx(model, onnx_path, input_size)
        max_diff = parity(model, onnx_path, input_size, seed)
        if max_diff > PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX export disagrees with torch: max abs logit diff {max_diff:.3g}")
        return write_bundle(
            out_dir,
            onnx_path,
            name=f"convnextv2-{size}-untrained",
            version=f"0.0.0+seed{seed}",
            input_size=input_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            labels=LABELS,
            fake_index=LABELS.index("fake"),
            threshold=0.5,
            aggregation="mean",
            trained=False,
            demo=False,
            metrics={},
            training={
                "note": "randomly initialised, never trained: scores mean nothing",
                "architecture": f"ConvNextV2ForImageClassification ({size})",
                "parameters": sum(p.numel() for p in model.parameters()),
                "seed": seed,
                "torch": torch.__version__,
                "onnx_parity_max_abs_diff": max_diff,
            },
        )


def main(argv=None) -> int:
    from training.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="dfd-train init-bundle", formatter_class=HelpFormatter,
        description="Build a model bundle around a randomly initialised ConvNeXt V2 (scores mean nothing).",
    )
    parser.add_argument("out_dir", help="folder to write the bundle into")
    parser.add_argument("--size", default="atto", choices=sorted(SIZES), help="ConvNeXt V2 size")
    parser.add_argument("--input-size", type=int, default=224, help="model input side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    bundle = build_untrained_bundle(args.out_dir, args.size, args.input_size, args.seed)
    print(f"wrote {bundle.path} ({bundle.info.name}, sha256 {bundle.info.sha256[:12]}, "
          f"parity {bundle.manifest['training']['onnx_parity_max_abs_diff']:.2e}) - UNTRAINED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
