"""The dataset registry beyond CIFAR-100: CIFAR-10 and ImageFolder files read by the real loaders, downloads over
real HTTP from 127.0.0.1, other image sizes through the augmentation, the models and one training group."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from kdsweep.data import Geometry, augment, decode_views, load_dataset, parse_dataset
from kdsweep.data.cifar10 import CIFAR10
from kdsweep.data.cifar100 import CIFAR100
from kdsweep.engine import run_group
from kdsweep.errors import UserError
from kdsweep.models import create_model
from kdsweep.cli import main
from kdsweep.single import parse_data_options
from kdsweep.space import load_space
from kdsweep.sweep.dry_run import describe
from kdsweep.sweep.preflight import check_dataset
from cifar_files import tar_gz, write_cifar10_archive, write_cifar100_archive
from helpers import group_spec, random_images, run_spec, save_teacher


# --- CIFAR-10 ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cifar10_files(tmp_path):
    """A 53/20-image archive in torchvision's CIFAR-10 format (five uneven training batches), and its tensors."""
    images = random_images(73, seed=3)
    labels = torch.arange(73) % 10
    write_cifar10_archive(tmp_path, images[:53], labels[:53], images[53:], labels[53:])
    return tmp_path, images[:53], labels[:53], images[53:], labels[53:]


def test_cifar10_round_trip(cifar10_files):
    root, train_images, train_labels, test_images, test_labels = cifar10_files
    data = load_dataset(parse_dataset({"name": "cifar10", "root": str(root)}))
    assert torch.equal(data.train_images, train_images) and torch.equal(data.train_labels, train_labels)
    assert torch.equal(data.test_images, test_images) and torch.equal(data.test_labels, test_labels)
    assert data.num_classes == 10 and data.geometry.num_views == 162
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2470, 0.2435, 0.2616)


def test_torchvision_reads_the_written_cifar10_archive(cifar10_files, monkeypatch):
    """torchvision's own CIFAR10 reader, with only its MD5 checks (of the official files) switched off."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    root, train_images, train_labels, _, _ = cifar10_files
    monkeypatch.setattr(TorchvisionCIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: True)
    dataset = TorchvisionCIFAR10(str(root), train=True, download=False)
    assert np.array_equal(dataset.data, train_images.permute(0, 2, 3, 1).numpy())
    assert dataset.targets == train_labels.tolist() and dataset.classes[3] == "class_3"


def test_cifar10_damaged_batch_names_the_file(cifar10_files):
    root = cifar10_files[0]
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"\x80\x02}q\x00(U\x04dataq")
    with pytest.raises(UserError) as error:
        load_dataset(parse_dataset({"name": "cifar10", "root": str(root)}))
    message = str(error.value)
    assert f"{batch} is not a readable CIFAR-10 file" in message
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch and batches.meta" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


# --- downloads over real HTTP --------------------------------------------------------------------------------------


@pytest.fixture
def http_folder(tmp_path):
    """Serve a folder over HTTP on 127.0.0.1 (a free port); yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("dataset, write", [(CIFAR10, write_cifar10_archive), (CIFAR100, write_cifar100_archive)],
                         ids=["cifar10", "cifar100"])
def test_download_fetches_and_checks_the_archive_over_http(tmp_path, http_folder, monkeypatch, dataset, write):
    """`download: true` fetches the archive with torchvision's downloader from a real HTTP server (the official
    URL replaced by 127.0.0.1), checks its MD5 and extracts it; a wrong MD5 or a dead server is a UserError."""
    served, base = http_folder
    images, labels = random_images(30, seed=4), torch.arange(30) % 10
    folder = write(tmp_path / "made", images[:20], labels[:20], images[20:], labels[20:])
    name = dataset.FORMAT.url.rsplit("/", 1)[-1]
    archive = tar_gz(folder, served / name)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(dataset, "FORMAT", dataclasses.replace(dataset.FORMAT, url=f"{base}/{name}", md5=md5))

    fetched = load_dataset(parse_dataset({"name": dataset.name, "root": str(tmp_path / "new"), "download": True}))
    assert torch.equal(fetched.train_images, images[:20]) and torch.equal(fetched.test_labels, labels[20:])
    assert (tmp_path / "new" / name).is_file()  # torchvision keeps the archive next to the extracted folder

    monkeypatch.setattr(dataset, "FORMAT", dataclasses.replace(dataset.FORMAT, md5="0" * 32))
    with pytest.raises(UserError, match=f"could not download {dataset.FORMAT.title} into {tmp_path / 'bad'}"):
        load_dataset(parse_dataset({"name": dataset.name, "root": str(tmp_path / "bad"), "download": True}))
    monkeypatch.setattr(dataset, "FORMAT", dataclasses.replace(dataset.FORMAT, url=f"{base}/missing.tar.gz"))
    with pytest.raises(UserError, match="HTTP Error 404"):
        load_dataset(parse_dataset({"name": dataset.name, "root": str(tmp_path / "gone"), "download": True}))


# --- ImageFolder ---------------------------------------------------------------------------------------------------


CLASSES = ("cat", "ant", "bee")  # written unsorted: labels follow the sorted names (ant 0, bee 1, cat 2)


def write_image_folder(root: Path, size: int = 64, train_per_class: int = 4, test_per_class: int = 2,
                       test_classes=CLASSES) -> dict:
    """PNG files in ImageFolder layout; returns {split: [(class, HWC uint8 pixels), ...]} in kdsweep's order."""
    g = torch.Generator().manual_seed(5)
    written = {"train": [], "val": []}
    for split, per_class, classes in (("train", train_per_class, CLASSES), ("val", test_per_class, test_classes)):
        for name in sorted(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{name}_{i:02d}.png")
                written[split].append((name, pixels))
    return written


def image_folder(root: Path, **knobs):
    return parse_dataset({"name": "image_folder", "root": str(root), **knobs})


def test_image_folder_reads_every_image_exactly(tmp_path):
    written = write_image_folder(tmp_path, test_classes=("bee", "cat"))
    data = load_dataset(image_folder(tmp_path, train_subset=10))
    train = written["train"]
    assert data.train_images.shape == (10, 3, 64, 64) and data.num_classes == 3
    assert all(np.array_equal(data.train_images[i].permute(1, 2, 0).numpy(), train[i][1]) for i in range(10))
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 2  # ant, bee, cat: sorted, as ImageFolder
    assert data.test_labels.tolist() == [1, 1, 2, 2]  # the test split may lack a class; labels keep their index
    assert data.geometry == Geometry(64, 3, 4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    from torchvision.datasets import ImageFolder

    reference = ImageFolder(str(tmp_path / "train"))
    assert reference.classes == ["ant", "bee", "cat"] and [t for _, t in reference.samples][:10] == \
        data.train_labels.tolist()


def test_image_folder_problems_are_user_errors(tmp_path):
    write_image_folder(tmp_path, size=48)
    with pytest.raises(UserError) as error:
        load_dataset(image_folder(tmp_path))
    assert "image_folder: 12 image(s) are not 64x64 px (" in str(error.value)
    assert f"{tmp_path / 'train' / 'ant' / 'ant_00.png'} is 48x48" in str(error.value)
    assert "Set `resize: true`" in str(error.value)
    resized = load_dataset(image_folder(tmp_path, resize=True))
    assert resized.train_images.shape == (12, 3, 64, 64)

    (tmp_path / "val" / "wasp").mkdir()
    with pytest.raises(UserError, match="has classes the training split lacks: wasp"):
        load_dataset(image_folder(tmp_path, resize=True))
    (tmp_path / "val" / "wasp").rmdir()
    (tmp_path / "train" / "bee" / "bee_00.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bee_00.png is not a readable image"):
        load_dataset(image_folder(tmp_path, resize=True))
    with pytest.raises(UserError, match="image_folder: .*/elsewhere/train is not a folder. kdsweep reads torchvision's "
                                        "ImageFolder layout"):
        load_dataset(image_folder(tmp_path / "elsewhere"))


def test_image_folder_knobs_are_checked_together():
    from kdsweep.data import dataset_problems

    assert dataset_problems({"name": "image_folder", "root": "x", "image_size": 48}) == [
        ("dataset.image_size", "expected a multiple of 32 px (the models halve their maps up to five times), got 48")]
    assert dataset_problems({"name": "image_folder", "image_size": 32, "padding": 40}) == [
        ("dataset.root", "required: the folder that holds train/ and val/"),
        ("dataset.padding", "expected less than image_size (32), got 40")]
    assert dataset_problems({"name": "image_folder", "root": "x", "std": [0.2, 0, 0.2]}) == [
        ("dataset.std[1]", "expected a value > 0, got 0")]


# --- other image sizes: augmentation, models, training -------------------------------------------------------------


def test_augment_equals_torchvision_at_64px_with_padding_8(monkeypatch):
    """(2 x 8 + 1)^2 x 2 = 578 views; each equals RandomCrop(64, padding=8) + flip forced to that view."""
    geometry = Geometry(64, 3, 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert geometry.num_views == 578
    forced = {}
    monkeypatch.setattr(T.RandomCrop, "get_params", staticmethod(lambda img, size: forced["crop"]))
    image = random_images(1, size=64, seed=6)[0]
    image[:, :8] = 255  # a bright band at the top: the zero padding must appear next to it
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    ours = augment(image.expand(578, -1, -1, -1), torch.arange(578), geometry)
    for view in range(578):
        dy, dx, flip = decode_views(view, 8)
        forced["crop"] = (dy, dx, 64, 64)
        reference = T.Compose([T.RandomCrop(64, padding=8), T.RandomHorizontalFlip(p=float(flip)), T.ToTensor(),
                               T.Normalize(geometry.mean, geometry.std)])(pil)
        assert torch.equal(ours[view], reference), f"view {view}"


@pytest.mark.parametrize("arch, last_map", [("resnet8x4", 16), ("vgg8", 4), ("MobileNetV2", 4), ("ShuffleV2", 8)])
def test_models_know_their_map_sizes_at_64px(arch, last_map):
    """Last stage maps twice the 32 px size, except VGG's: the reference pools once more for 64 px inputs."""
    model = create_model(arch, num_classes=7, image_size=64).eval()
    with torch.no_grad():
        out = model.forward_intermediates(torch.zeros(2, 3, 64, 64), blocks=True)
    info = model.feature_info
    assert info.input_size == 64 and out.logits.shape == (2, 7) and out.pooled.shape == (2, info.pooled_dim)
    assert [m.shape[-1] for m in out.stages] == [info.stage_size(i) for i in range(len(out.stages))]
    assert [m.shape[-1] for m in out.blocks] == [info.block_size(i) for i in range(len(out.blocks))]
    assert info.stage_size(-1) == last_map
    with pytest.raises(ValueError, match="image_size must be a positive multiple of 32 px, got 48"):
        create_model(arch, image_size=48)


def test_a_group_trains_simkd_and_dkd_on_64px_image_folder(tmp_path):
    """The whole engine at 64 px: the teacher (its weights are size-free) and two students, one epoch each."""
    write_image_folder(tmp_path / "data", train_per_class=6)
    teacher = save_teacher(tmp_path / "teacher.pth", arch="resnet8", num_classes=3)
    runs = [run_spec("simkd", epochs=1), run_spec("dkd", epochs=1, kind="dkd")]
    data = image_folder(tmp_path / "data")
    records = run_group(group_spec(runs, tmp_path / "exp", teacher, data=data))
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert all(len(r["history"]) == 1 and 0 <= r["best_acc"] <= 100 for r in records)
    assert {"train_loss_tckd", "train_loss_nckd"} <= set(records[1]["history"][0])


def test_spaces_and_train_take_every_dataset(tmp_path):
    write_image_folder(tmp_path / "tiny")
    space = tmp_path / "space.yaml"
    space.write_text(
        f"experiment: tiny64\nstorage: {tmp_path / 'out'}\n"
        f"dataset: {{name: image_folder, root: {tmp_path / 'tiny'}, image_size: 64, padding: 8}}\n"
        "teacher: {arch: resnet8, train: {epochs: 1}}\nstudent: {arch: resnet8}\n"
        "recipe: {epochs: 1}\nvariants: {simkd: {title: SimKD}, kd: {title: KD, method: {kind: kd}}, vanilla: {title: CE, method: {kind: vanilla}}}\n"
        "axes: {lr: [0.05], seed: [0]}\n"
    )
    loaded = load_space(space)
    assert loaded.data.root == str(tmp_path / "tiny") and loaded.data.geometry.num_views == 578
    text = describe(loaded)
    assert "dataset image_folder (64 px)" in text and "rough cost of what is left" in text
    cifar10 = tmp_path / "cifar10.yaml"
    cifar10.write_text(space.read_text().replace(f"{{name: image_folder, root: {tmp_path / 'tiny'}, image_size: 64, "
                                                 "padding: 8}", "{name: cifar10, root: /mnt/data}"))
    other = load_space(cifar10)
    assert other.data.identity() == {"name": "cifar10", "train_subset": None, "test_subset": None}
    assert other.runs[0].run_id != loaded.runs[0].run_id and "dataset cifar10 (32 px)" in describe(other)

    assert check_dataset(loaded) == 3  # the driver reads the files once before Ray starts
    (tmp_path / "tiny" / "val").rename(tmp_path / "tiny" / "test")
    with pytest.raises(UserError, match=f"{space}: dataset.root: image_folder: {tmp_path / 'tiny' / 'val'} is not "
                                        "a folder"):
        check_dataset(loaded)
    (tmp_path / "tiny" / "test").rename(tmp_path / "tiny" / "val")

    data = parse_data_options("image_folder", {"image_size": 64}, str(tmp_path / "tiny"), False, ())
    assert data.root == str(tmp_path / "tiny")
    with pytest.raises(UserError, match="--download: dataset image_folder is not downloaded"):
        parse_data_options("image_folder", {}, str(tmp_path / "tiny"), True, ())
    with pytest.raises(UserError, match=r"--data image_size: expected a multiple of 32 px"):
        parse_data_options("image_folder", {"image_size": 40}, str(tmp_path / "tiny"), False, ())
    with pytest.raises(UserError, match=r"--dataset: unknown dataset 'cifar' \(did you mean 'cifar10'\?\)"):
        parse_data_options("cifar", {}, "data", False, ())


def test_kdsweep_train_takes_cifar10_and_image_folder(cifar10_files, tmp_path):
    root = cifar10_files[0]
    common = ["--student", "resnet8", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--threads", "1"]
    assert main(["train", *common, "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp_path / "c10")]) == 0
    write_image_folder(tmp_path / "folders")
    assert main(["train", *common, "--dataset", "image_folder", "--data-root", str(tmp_path / "folders"), "--data",
                 "padding=8", "--out", str(tmp_path / "if")]) == 0
    for out, test_images in (("c10", 20), ("if", 6)):
        (progress,) = (tmp_path / out / "runs").glob("*/progress.json")
        record = json.loads(progress.read_text())
        assert record["status"] == "completed" and len(record["history"]) == 1
        correct = record["best_acc"] * test_images / 100  # a whole number of the split's test images
        assert abs(correct - round(correct)) < 1e-9
