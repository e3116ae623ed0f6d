"""distill.shapes (issue 12): deterministic, balanced, loaded by --data shapes, and harder than --data synthetic."""
import pytest
import torch

from distill.data import TensorSplit, load_data, synthetic_split
from distill.shapes import shapes_split
from pruning.errors import UserError


def test_shapes_are_deterministic_by_seed():
    a, b, c = shapes_split(5, 60, seed=3), shapes_split(5, 60, seed=3), shapes_split(5, 60, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("classes, n", [(7, 70), (100, 300)])
def test_shapes_have_the_right_shape_dtype_and_balanced_labels(classes, n):
    split = shapes_split(classes, n, seed=0)
    assert isinstance(split, TensorSplit)
    assert split.images.dtype == torch.uint8 and split.images.shape == (n, 3, 32, 32)
    assert split.labels.dtype == torch.long and torch.bincount(split.labels).tolist() == [n // classes] * classes
    assert split.images.float().std() > 20  # drawn, not blank


def test_load_data_shapes_gives_the_synthetic_sizes():
    data = load_data("shapes", synthetic_classes=100, synthetic_train=400, val_fraction=0.25)
    assert data.num_classes == 100 and (len(data.train), len(data.val), len(data.test)) == (300, 100, 100)
    assert isinstance(data.train, TensorSplit)  # the in-memory path (teacher cache, device-side augmentation)


@pytest.mark.parametrize("spec", ["shapes", "synthetic"])
def test_synthetic_test_sets_the_test_size_and_leaves_the_training_images(spec):
    default = load_data(spec, synthetic_classes=10, synthetic_train=200)
    larger = load_data(spec, synthetic_classes=10, synthetic_train=200, synthetic_test=120)
    assert (len(default.test), len(larger.test)) == (50, 120)  # 0: a quarter of --synthetic-train
    assert torch.equal(default.train.images, larger.train.images)  # a teacher of one is a teacher of the other
    assert torch.bincount(larger.test.labels).tolist() == [12] * 10


def test_too_few_classes_are_a_user_error():
    with pytest.raises(UserError, match="--synthetic-classes 1"):
        shapes_split(1, 10, seed=0)


def nearest_class_mean_accuracy(train: TensorSplit, test: TensorSplit, classes: int) -> float:
    """Top-1 of classifying raw pixels by the nearest class-mean image."""
    x = train.images.flatten(1).float()
    means = torch.stack([x[train.labels == k].mean(0) for k in range(classes)])
    predicted = torch.cdist(test.images.flatten(1).float(), means).argmin(1)
    return (predicted == test.labels).float().mean().item()


def test_shapes_are_far_harder_than_synthetic_for_raw_pixel_templates():
    """Synthetic classes are fixed colour patterns (a template matches them); shapes move, turn and vary in
    colour, so a template gets at most their colour family (5 families x 2 shapes here; chance 0.1)."""
    synthetic = nearest_class_mean_accuracy(synthetic_split(10, 400, seed=1), synthetic_split(10, 200, seed=2), 10)
    shapes = nearest_class_mean_accuracy(shapes_split(10, 400, seed=1), shapes_split(10, 200, seed=2), 10)
    assert synthetic > 0.95
    assert shapes < 0.5
