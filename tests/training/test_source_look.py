"""A source's look under the blend (`Augment(source=...)`, recipe v7, docs/training.md): heavy
low-resolution compression goes on the real pixels before a fresh blend is made of them, so a
fake carries its source's look under the blend as a fake of badly compressed footage would."""

from __future__ import annotations

import shutil

import numpy as np
import torch

from training import demo
from training.augment import Augment, source_look
from training.dataset import CropDataset, landmarks_of, load_rgb, read_metadata
from training.synth import self_blend, synthesize
from worker.models.classifier import normalise

PLAIN = dict(flip=0.0, jpeg=0.0, blur=0.0, downscale=0.0, colour=0.0)


def _detail(image: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: fine detail a low-bitrate source loses."""
    x = image.astype(np.float64)
    return float(np.abs(np.diff(x, axis=1)).mean())


def test_the_look_keeps_the_crop_shape_and_takes_fine_detail_away():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    looks = [source_look(image, rng) for _ in range(10)]
    assert all(look.shape == image.shape and look.dtype == np.uint8 for look in looks)
    assert all(_detail(look) < 0.5 * _detail(image) for look in looks)
    assert len({look.tobytes() for look in looks}) == 10  # a new scale and quality at every draw


def test_reals_and_the_parents_of_fresh_blends_get_the_look_before_the_blend(prepared, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(prepared, folder)
    synthesize(folder, progress=False)
    rows = read_metadata(folder)
    fake = next(r for r in rows if r["manipulation"] == "self-blend")
    real = next(r for r in rows if r["crop"] == fake["source"])  # the blend's parent
    parent = load_rgb(folder / real["crop"])

    def drawn(row: dict, source: float) -> tuple[np.ndarray, np.random.Generator, CropDataset]:
        """The dataset's tensor for a row, and the generator it drew from (replayed from torch's seed)."""
        data = CropDataset(folder, [row], 64, (0.5,) * 3, (0.25,) * 3, augment=Augment(**PLAIN, source=source),
                           fresh_blends=True)
        torch.manual_seed(1)
        x = data[0]["pixel_values"].numpy()
        torch.manual_seed(1)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        return x, rng, data

    x, rng, data = drawn(real, 1.0)
    assert rng.random() < 1.0  # the draw that decides the look
    looked = source_look(parent, rng)
    assert np.array_equal(x, normalise(looked[None], data.scale, data.shift)[0])
    assert not np.array_equal(looked, parent)
    x, rng, data = drawn(real, 0.0)
    assert np.array_equal(x, normalise(parent[None], data.scale, data.shift)[0])  # no look: the crop as stored

    x, rng, data = drawn(fake, 1.0)
    rng.random()
    under = source_look(parent, rng)  # the look first, then the blend on top of it
    blend = self_blend(under, landmarks_of(fake), rng, data.blend_strength)[0]
    assert np.array_equal(x, normalise(blend[None], data.scale, data.shift)[0])


def test_the_demo_gives_the_look_to_thirty_percent_of_its_crops_and_it_is_off_by_default():
    assert Augment().source == 0.0 and Augment.cross_source().source == 0.0
    assert demo.AUGMENT.source == 0.3 and demo.AUGMENT.field == 0.5 and demo.DEMO_VERSION == "v7"
