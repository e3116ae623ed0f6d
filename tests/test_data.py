"""distill.data: the synthetic set is learnable, splits are right, missing data gives clear errors."""
import pytest
import torch
from PIL import Image

from distill.data import Batch, TensorLoader, load_data, synthetic_split
from pruning.errors import UserError


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic_split(5, 100, seed=3), synthetic_split(5, 100, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (100, 3, 32, 32)
    assert torch.bincount(a.labels).tolist() == [20] * 5


def test_synthetic_is_learnable():
    """A linear classifier trained for a few steps goes far above chance: classes are separable."""
    torch.manual_seed(0)
    data = load_data("synthetic", synthetic_classes=10, synthetic_train=500, val_fraction=0.2)
    train = TensorLoader(data.train, 100, torch.device("cpu"), 32, train=True)
    val = TensorLoader(data.val, 100, torch.device("cpu"), 32, train=False)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def accuracy():
        with torch.no_grad():
            return sum((model(b.x).argmax(1) == b.y).sum().item() for b in val) / len(data.val)

    before = accuracy()
    for epoch in range(5):
        train.set_epoch(epoch)
        for batch in train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(batch.x), batch.y).backward()
            opt.step()
    after = accuracy()
    assert after > 0.8 and after > before + 0.4, (before, after)


def test_splits_and_subsets():
    data = load_data("synthetic", synthetic_classes=4, synthetic_train=200, val_fraction=0.25,
                     train_subset=100, val_subset=20)
    assert len(data.train) == 100 and len(data.val) == 20 and len(data.test) == 20
    assert data.num_classes == 4 and data.val is not data.test
    no_val = load_data("synthetic", synthetic_classes=4, synthetic_train=200)
    assert no_val.val is no_val.test  # val_fraction 0: the seed's protocol validates on the test set


def test_loader_batches_are_normalised_and_resized():
    split = synthetic_split(3, 10, seed=0)
    batches = list(TensorLoader(split, 4, torch.device("cpu"), 64, train=True, seed=1))
    assert [len(b.y) for b in batches] == [4, 4, 2]
    assert isinstance(batches[0], Batch) and batches[0].x.shape == (4, 3, 64, 64)
    assert batches[0].view is not None and -3 < batches[0].x.min() < batches[0].x.max() < 3


def test_missing_cifar_offline_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-100 is not in .* --data synthetic"):
        load_data("cifar100", data_dir=str(tmp_path), download=False)


def make_folder(root, classes, n=3):
    for part in ("train", "val"):
        for cls in classes[part]:
            d = root / part / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 40, 100, 200)).save(d / f"{i}.png")


def test_imagefolder_infers_classes(tmp_path):
    make_folder(tmp_path, {"train": ["cat", "dog", "eel"], "val": ["cat", "dog", "eel"]})
    data = load_data(f"imagefolder:{tmp_path}", data_dir=str(tmp_path / "cache"), image_size=32)
    assert data.num_classes == 3 and len(data.train) == 9 and len(data.test) == 9
    assert sorted(data.train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8  # 40 px files stored at --image-size 32


@pytest.mark.parametrize("layout, match", [
    ({"train": ["cat", "dog"], "val": ["cat", "eel"]}, "different classes"),
    ({"train": ["cat"], "val": []}, "missing|class"),
])
def test_imagefolder_errors(tmp_path, layout, match):
    make_folder(tmp_path, layout)
    (tmp_path / "val").mkdir(exist_ok=True)
    with pytest.raises(UserError, match=match):
        load_data(f"imagefolder:{tmp_path}", data_dir=str(tmp_path / "cache"), image_size=32)
