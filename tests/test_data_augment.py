"""The batch (GPU-resident) augmentation has torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip
semantics, on CPU tensors: every view pixel for pixel, the statistics of random draws, shapes and ranges;
--augment resized-crop is torchvision's RandomResizedCrop (box table, geometry) and none has one view."""
from __future__ import annotations

import pytest
import torch
from torchvision import transforms
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from benchmarks.train_throughput import per_image_transform
from distill.data import (MEAN, NUM_VIEWS, PAD, RRC_BOXES, RRC_RATIO, RRC_SCALE, STD, VIEWS, TensorLoader,
                          TensorSplit, augment, resized_crop, rrc_boxes)

CPU = torch.device("cpu")


def gradient_image() -> torch.Tensor:
    """Channel 0 grows left to right, channel 1 top to bottom, channel 2 constant: no pixel is 0 (= padding)."""
    ramp = torch.linspace(10, 250, 32)
    return torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32), torch.full((32, 32), 128.0)]).to(torch.uint8)


def test_every_view_is_torchvisions_crop_of_the_padded_image_then_flip():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = torch.arange(NUM_VIEWS)
    ours = augment(image.expand(NUM_VIEWS, -1, -1, -1), views)
    padded = TF.pad(image, [PAD])
    for view in range(NUM_VIEWS):
        flip, dx, dy = view % 2, (view // 2) % (2 * PAD + 1), (view // 2) // (2 * PAD + 1)
        expected = TF.crop(padded, dy, dx, 32, 32)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(ours[view], expected), f"view {view} (dy {dy}, dx {dx}, flip {flip})"


@pytest.mark.parametrize("image_size", [32, 48])
def test_batches_have_the_network_shape_and_normalised_range(image_size):
    split = TensorSplit(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), torch.arange(10))
    lo, hi = ((0 - MEAN) / STD).min().item(), ((1 - MEAN) / STD).max().item()
    for train in (True, False):
        batches = list(TensorLoader(split, 4, CPU, image_size, train=train))
        assert [len(b.y) for b in batches] == [4, 4, 2]
        for b in batches:
            assert b.x.shape == (len(b.y), 3, image_size, image_size) and b.x.dtype == torch.float32
            assert lo - 1e-5 <= b.x.min().item() and b.x.max().item() <= hi + 1e-5
            assert (b.view is not None) == train
            assert torch.equal(b.y, split.labels[b.index])


def test_eval_batches_equal_torchvisions_resize_and_normalize():
    split = TensorSplit(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), torch.arange(3))
    ours = next(iter(TensorLoader(split, 3, CPU, 64, train=False))).x
    normalize = v2.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist())
    theirs = normalize(TF.resize(split.images.float() / 255, [64, 64], antialias=False))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_random_draws_have_torchvisions_crop_and_flip_statistics():
    """Mean augmented image, padding frequency per column and flip rate agree with torchvision's pipeline."""
    n = 3000
    image = gradient_image()
    loader = TensorLoader(TensorSplit(image.expand(n, -1, -1, -1).contiguous(), torch.zeros(n, dtype=torch.long)),
                          n, CPU, 32, train=True, seed=1)
    batch = next(iter(loader))
    torch.manual_seed(0)
    transform = per_image_transform(32)
    theirs = torch.stack([transform(image) for _ in range(n)])
    pad_value = ((0 - MEAN) / STD).view(3, 1, 1)

    def padding_per_column(x):
        return (x == pad_value).all(dim=1).float().mean(dim=(0, 1))  # fraction of padded pixels per column

    assert (batch.view % 2).float().mean().item() == pytest.approx(0.5, abs=0.04)
    offsets = torch.bincount((batch.view // 2) % (2 * PAD + 1), minlength=9).float() / n
    assert offsets.sub(1 / 9).abs().max().item() < 0.025  # dx uniform over 0..8, as RandomCrop's get_params
    torch.testing.assert_close(padding_per_column(batch.x), padding_per_column(theirs), rtol=0, atol=0.04)
    torch.testing.assert_close(batch.x.mean(0), theirs.mean(0), rtol=0, atol=0.15)
    # Sanity of the statistic itself: without the flip, the column means would differ clearly.
    unflipped = augment(image.expand(n, -1, -1, -1), batch.view - batch.view % 2)
    assert (loader.transform(unflipped, None).mean(0) - theirs.mean(0)).abs().max().item() > 0.5


def test_a_resized_crop_view_is_torchvisions_resized_crop_then_flip():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    top, left, h, w = 4, 6, 24, 20  # a pixel-aligned box, shrunk to 12 px (bilinear, no antialiasing)
    box = torch.tensor([[top / 32, left / 32, h / 32, w / 32]]).expand(2, 4)
    ours = resized_crop(image.expand(2, -1, -1, -1), box, torch.tensor([0, 1]), 12)
    theirs = TF.resized_crop(image.float() / 255, top, left, h, w, [12, 12], antialias=False)
    torch.testing.assert_close(ours[0], theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[1], TF.horizontal_flip(theirs), rtol=0, atol=1e-5)


def test_resized_crop_boxes_have_torchvisions_distribution():
    boxes = rrc_boxes(RRC_BOXES)
    assert torch.equal(boxes, rrc_boxes(RRC_BOXES)), "view ids must mean the same boxes in every run"
    top, left, h, w = boxes.unbind(1)
    area, aspect = h * w, w / h
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 1 + 1e-6).all() and (left + w <= 1 + 1e-6).all()
    assert area.min() >= RRC_SCALE[0] - 1e-6 and aspect.min() >= 0.75 - 1e-6 and aspect.max() <= 4 / 3 + 1e-6
    torch.manual_seed(0)
    side, theirs = 1000, []
    image = torch.zeros(1, 1, 1).expand(1, side, side)  # get_params reads only the shape
    for _ in range(1500):
        i, j, th, tw = transforms.RandomResizedCrop.get_params(image, list(RRC_SCALE), list(RRC_RATIO))
        theirs.append((th * tw / side ** 2, tw / th, (j + tw / 2) / side))
    theirs = torch.tensor(theirs)
    assert area.mean().item() == pytest.approx(theirs[:, 0].mean().item(), abs=0.03)
    assert aspect.mean().item() == pytest.approx(theirs[:, 1].mean().item(), abs=0.03)
    assert (left + w / 2).mean().item() == pytest.approx(0.5, abs=0.03)
    assert VIEWS["resized-crop"].count == 2 * RRC_BOXES


@pytest.mark.parametrize("augment", ["resized-crop", "none"])
def test_other_augmentations_draw_their_own_views_and_evaluate_deterministically(augment):
    split = TensorSplit(torch.randint(0, 256, (40, 3, 37, 37), dtype=torch.uint8), torch.arange(40), augment)
    train = next(iter(TensorLoader(split, 40, CPU, 32, train=True, seed=1)))
    assert 0 <= train.view.min() and train.view.max() < VIEWS[augment].count
    distinct = len(train.view.unique())
    assert (distinct == 1) if augment == "none" else (distinct > 20)
    evaluated = [next(iter(TensorLoader(split, 40, CPU, 32, train=False))).x for _ in range(2)]
    assert torch.equal(*evaluated) and evaluated[0].shape == (40, 3, 32, 32)
    if augment == "none":  # the one training view is the evaluation transform
        torch.testing.assert_close(train.x, evaluated[0][train.index], rtol=0, atol=0)
