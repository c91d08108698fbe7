import pickle

import numpy as np
import pytest
import torch

from amc.config import DataConfig, validate
from amc.data import (DIGITS_FILE, DIGITS_TEST_IMAGES, ImageSet, augment_cifar, channel_statistics, load_splits,
                      read_cifar, read_digits, read_image_folder, split_indices)
from amc.errors import AmcError
from amc.io import load_weights, open_model, read_checkpoint, save_model
from amc.models import ModelSpec, build_model


@pytest.mark.parametrize("name,params", [("resnet20", 269_722), ("resnet56", 853_018), ("resnet32", 464_154),
                                         ("resnet44", 658_586), ("resnet110", 1_727_962), ("plain20", 269_722)])
def test_cifar_resnet_parameter_counts(name, params):
    model = build_model(ModelSpec(name))
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,shape", [("vgg16", 32), ("mobilenet_v1", 32), ("mobilenet_v2", 32),
                                        ("mobilenet_v2_imagenet", 96)])
def test_other_models_run(name, shape):
    model = build_model(ModelSpec(name, 7)).eval()
    assert model(torch.zeros(1, 3, shape, shape)).shape == (1, 7)


@pytest.mark.parametrize("name,classes", [("resnet20", 10), ("mobilenet_v2_imagenet", 1000),
                                          ("torchvision:resnet18", 1000), ("tests.nets:seven_class_factory", 7)])
def test_class_count_defaults_to_the_architectures_own(name, classes):
    """Without --num-classes or a checkpoint, an ImageNet model gets 1000 classes and a factory its own default."""
    from amc.models import default_num_classes

    assert default_num_classes(name) == classes
    if not name.startswith("torchvision:"):
        model, spec, _ = open_model(name, input_shape=(3, 32, 32))
        assert spec.num_classes == classes and model(torch.zeros(1, 3, 32, 32)).shape == (1, classes)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(AmcError, match="unknown model 'resnet21'"):
        build_model(ModelSpec("resnet21"))


def test_user_factory_and_checkpoint_roundtrip(tmp_path):
    spec = ModelSpec("amc.models.resnet_cifar:CifarResNet", 10, (3, 32, 32), {"depth": 8})
    model = build_model(spec)
    save_model(tmp_path / "m.pt", model, spec)
    again, spec2, _ = open_model(None, tmp_path / "m.pt")
    assert spec2 == spec
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_model_arguments_are_literals_or_strings():
    from amc.models import model_arguments

    assert model_arguments(["width=0.5", "stem=cifar", "residual=False", "shape=(1, 2)"]) == {
        "width": 0.5, "stem": "cifar", "residual": False, "shape": (1, 2)}
    for bad, message in ((["width"], "must look like KEY=VALUE"), (["=3"], "must look like KEY=VALUE"),
                         (["width=0.5", "width=1"], "given twice")):
        with pytest.raises(AmcError, match=message):
            model_arguments(bad)


def test_model_arguments_build_the_model_and_are_checked_against_a_checkpoint(tmp_path):
    """Arguments reach the constructor (half the channels), a plain state_dict file loads with them, and an amc
    checkpoint that recorded other arguments is refused instead of loading into the wrong architecture."""
    from amc.cli.common import fresh_spec
    from amc.config import ModelConfig

    spec = fresh_spec(ModelConfig("mobilenet_v2", arguments=("width=0.5",)), DataConfig())
    assert spec.kwargs == {"width": 0.5}
    half, full = build_model(spec), build_model(ModelSpec("mobilenet_v2"))
    assert half.features[0][0].out_channels * 2 == full.features[0][0].out_channels == 32
    torch.save(half.state_dict(), tmp_path / "plain.pt")
    loaded, loaded_spec, _ = open_model("mobilenet_v2", tmp_path / "plain.pt", kwargs={"width": 0.5})
    assert loaded_spec == spec and torch.equal(loaded.features[0][0].weight, half.features[0][0].weight)
    with pytest.raises(AmcError, match="shape mismatch: features.0.0.weight"):
        open_model("mobilenet_v2", tmp_path / "plain.pt")
    save_model(tmp_path / "amc.pt", half, spec)
    assert open_model(None, tmp_path / "amc.pt")[1].kwargs == {"width": 0.5}
    with pytest.raises(AmcError, match="records the model arguments"):
        open_model(None, tmp_path / "amc.pt", kwargs={"width": 1.0})
    with pytest.raises(AmcError, match="cannot be built with the arguments .*unexpected keyword"):
        build_model(ModelSpec("mobilenet_v2", kwargs={"widht": 0.5}))
    for width in ("abc", 0, -1):  # nonsense values: one line naming them, not a traceback from inside the model
        with pytest.raises(AmcError, match=f"cannot be built with the arguments {{'width': {width!r}}}"):
            build_model(ModelSpec("mobilenet_v2", kwargs={"width": width}))


def test_checkpoint_with_module_prefix_and_mismatch(tmp_path):
    model = build_model(ModelSpec("resnet8"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "a.th")
    loaded, _, _ = open_model("resnet8", tmp_path / "a.th")
    assert torch.equal(loaded.conv1.weight, model.conv1.weight)
    with pytest.raises(AmcError, match="missing: .*layer1.1"):
        open_model("resnet14", tmp_path / "a.th")


def test_corrupt_and_missing_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AmcError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(AmcError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_shared_checkpoints_load_without_key_mismatch(shared):
    for name, file in (("resnet20", "resnet20-12fca82f.th"), ("resnet56", "resnet56-4bfd9763.th")):
        state = torch.load(shared / "models" / file, map_location="cpu", weights_only=True)["state_dict"]
        model = build_model(ModelSpec(name))
        load_weights(model, state)
        assert torch.equal(model.linear.weight, state["module.linear.weight"])


def _write_cifar(root, n_train=30, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data, "labels": [int(x) for x in rng.integers(0, 10, n_train // 5)]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": list(range(n_test))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return folder


def test_cifar_reader_standard_layout(tmp_path):
    folder = _write_cifar(tmp_path)
    raw = pickle.load(open(folder / "data_batch_1", "rb"))
    train = read_cifar(str(tmp_path), "train")  # parent folder works too
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    # CIFAR rows are R plane, then G, then B (each 32x32, row major)
    assert torch.equal(train.images[0, 1].flatten(), torch.from_numpy(raw["data"][0][1024:2048]))
    assert read_cifar(str(folder), "test").labels.tolist() == list(range(10))
    with pytest.raises(AmcError, match="not a cifar-10-batches-py folder"):
        read_cifar(str(tmp_path / "cifar-10-batches-py" / ".."/ ".."), "train")


def test_image_folder_reader(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 20), colour).save(tmp_path / cls / f"{i}.png")
    data = read_image_folder(tmp_path, 8)
    assert data.classes == ["cat", "dog"] and data.images.shape == (4, 3, 8, 8)
    assert data.images[0, 0].min() == 255 and data.images[2, 2].min() == 255
    assert data.labels.tolist() == [0, 0, 1, 1]


def _counts(images: torch.Tensor) -> list[tuple]:
    """uint8 8x8 images (first channel) back to rows of the file's counts 0..16."""
    return [tuple(row) for row in ((images[:, 0].reshape(len(images), 64).double() * 16 / 255).round().int()).tolist()]


def test_digits_are_the_bundled_real_images_with_a_fixed_test_part():
    import gzip

    with gzip.open(DIGITS_FILE, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    assert raw.shape == (1797, 65) and raw[:, :64].max() == 16
    train, test = read_digits("train", 8), read_digits("test", 8)
    assert len(test) == DIGITS_TEST_IMAGES == 400 and len(train) == 1797 - 400
    assert train.images.dtype == torch.uint8 and train.images.shape == (1397, 3, 8, 8)
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # gray in all three channels
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0  # 0..16 scaled to 0..255
    # train and test together are exactly the file's images, each with its own label
    both = torch.cat([train.images, test.images])
    pairs = sorted(zip(_counts(both), torch.cat([train.labels, test.labels]).tolist()))
    assert pairs == sorted(zip(map(tuple, raw[:, :64].tolist()), raw[:, 64].tolist()))
    assert set(test.labels.tolist()) == set(range(10)) and train.classes == [str(d) for d in range(10)]
    # deterministic, and resized for the model
    again = read_digits("test", 16)
    assert again.images.shape == (400, 3, 16, 16) and torch.equal(again.images, read_digits("test", 16).images)
    assert torch.equal(again.labels, test.labels)
    with pytest.raises(AmcError, match="unknown split"):
        read_digits("search")


def test_digits_through_load_splits():
    cfg = validate(DataConfig("digits", holdout=300, search_images=200, split_seed=1))
    s = load_splits(cfg, ("train", "holdout", "search", "holdout_rest", "test"), num_classes=10, image_size=16)
    assert {k: len(v) for k, v in s.items()} == {"train": 1097, "holdout": 300, "search": 200, "holdout_rest": 100,
                                                 "test": 400}
    assert all(v.images.shape[1:] == (3, 16, 16) for v in s.values())
    assert torch.equal(s["test"].images, load_splits(DataConfig("digits", split_seed=2, holdout=10, search_images=5),
                                                     ("test",), image_size=16)["test"].images)  # split_seed: train only
    with pytest.raises(AmcError, match="labels up to 9 but the model has 5 outputs"):
        load_splits(cfg, ("test",), num_classes=5, image_size=16)


def test_digits_ship_with_the_package():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["amc"]
    assert DIGITS_FILE.stat().st_size < 100_000
    assert any(DIGITS_FILE.match(g) for g in globs) and any((DIGITS_FILE.parent / "README.md").match(g) for g in globs)
    assert "CC BY 4.0" in (DIGITS_FILE.parent / "README.md").read_text()


def test_channel_statistics():
    images = torch.tensor([[[[0]], [[255]]], [[[255]], [[255]]]], dtype=torch.uint8)  # 2 images, 2 channels, 1x1
    mean, std = channel_statistics(ImageSet(images, torch.zeros(2), ["a"]))
    assert mean == pytest.approx((0.5, 1.0)) and std == pytest.approx((0.5 ** 0.5, 0.0))


def test_split_is_deterministic_and_disjoint():
    a = split_indices(100, 20, 8, seed=3)
    b = split_indices(100, 20, 8, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(set(a["train"].tolist()) | set(a["holdout"].tolist())) == 100 and len(a["holdout"]) == 20
    assert set(a["search"].tolist()) <= set(a["holdout"].tolist()) and len(a["search"]) == 8
    assert not set(a["train"].tolist()) & set(a["holdout"].tolist())
    assert set(a["holdout_rest"].tolist()) == set(a["holdout"].tolist()) - set(a["search"].tolist())
    assert not torch.equal(split_indices(100, 20, 8, seed=4)["search"], a["search"])
    # a longer search split of the same holdout extends the shorter one (same permutation prefix)
    assert set(a["search"].tolist()) <= set(split_indices(100, 20, 12, seed=3)["search"].tolist())
    with pytest.raises(AmcError, match="leaves no training images"):
        split_indices(10, 10, 5, 0)
    with pytest.raises(AmcError, match="must be part of the holdout"):
        split_indices(100, 10, 11, 0)


def test_load_splits_missing_dir_is_clear():
    with pytest.raises(AmcError, match="data directory not found"):
        load_splits(DataConfig("cifar10", "/nonexistent/dir"))


def test_augmentation_keeps_shape_and_content():
    imgs = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    out = augment_cifar(imgs, torch.Generator().manual_seed(0))
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    assert not torch.equal(out, imgs)


def test_torchvision_models_by_name():
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(AmcError, match="needs torchvision"):
            build_model(ModelSpec("torchvision:resnet18"))
        pytest.skip("torchvision does not import here (optional path)")
    model = build_model(ModelSpec("torchvision:resnet18", 10, (3, 64, 64)))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
