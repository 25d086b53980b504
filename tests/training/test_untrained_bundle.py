"""The untrained ConvNeXt V2 bundle builder: CLI, manifest marked untrained, dynamic batch, parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from training.untrained_bundle import build_model, main
from worker.models.bundle import load_bundle


@pytest.mark.slow
def test_cli_builds_a_verified_untrained_bundle(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main([str(out), "--size", "atto", "--input-size", "64", "--seed", "3"]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    bundle = load_bundle(out)
    assert bundle.info.trained is False and bundle.info.name == "convnextv2-atto-untrained"
    assert bundle.input_size == 64 and bundle.labels == ["real", "fake"] and bundle.fake_index == 1
    assert bundle.threshold == 0.5 and bundle.mean == (0.485, 0.456, 0.406)
    training = bundle.manifest["training"]
    assert training["seed"] == 3 and training["parameters"] == 3_388_042  # atto's 3.4 M
    assert training["onnx_parity_max_abs_diff"] < 1e-3

    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    [inp], [output] = session.get_inputs(), session.get_outputs()
    assert (inp.name, output.name) == ("pixel_values", "logits")
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    logits = session.run(None, {"pixel_values": x})[0]
    assert logits.shape == (5, 2)  # the batch axis is dynamic (exported with 2)
    single = session.run(None, {"pixel_values": x[:1]})[0]
    np.testing.assert_allclose(single[0], logits[0], atol=1e-5)


def test_same_seed_same_weights_and_unknown_size():
    a, b, c = build_model("atto", seed=1), build_model("atto", seed=1), build_model("atto", seed=2)
    pairs = list(zip(a.parameters(), b.parameters(), c.parameters()))
    assert all(bool((pa == pb).all()) for pa, pb, _ in pairs)
    assert not all(bool((pa == pc).all()) for pa, _, pc in pairs)
    assert a.config.id2label == {0: "real", 1: "fake"}
    with pytest.raises(ValueError, match="unknown ConvNeXt V2 size 'huge'"):
        build_model("huge")
