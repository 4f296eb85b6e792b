import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from multissl.data.masking import MaskConfig, beit_mask
from multissl.modalities.vision.data import (
    BadImageError,
    ImageCollator,
    ImageDataset,
    Picture,
    build_image_dataset,
    eval_transform,
    find_images,
    scan_images,
    to_rgb,
    train_transform,
)
from multissl.modalities.vision.model import Vision, VisionConfig
from multissl.recipe import DataConfig, RecipeError

CFG = VisionConfig(image_size=32, patch_size=4)


@pytest.fixture(scope="module")
def photo(image_dirs) -> Image.Image:
    return Image.open(image_dirs[2][0]).convert("RGB")  # the astronaut


def test_every_mode_becomes_the_same_rgb(photo):
    rgb = np.asarray(photo)
    grey = photo.convert("L")
    assert to_rgb(grey).mode == "RGB" and np.array_equal(np.asarray(to_rgb(grey))[..., 0], np.asarray(grey))
    assert np.array_equal(np.asarray(to_rgb(photo.convert("RGBA"))), rgb)
    la = to_rgb(grey.convert("LA"))
    assert np.array_equal(np.asarray(la)[..., 1], np.asarray(grey))
    p = photo.convert("P")
    assert np.array_equal(np.asarray(to_rgb(p)), np.asarray(p.convert("RGB")))
    cmyk = to_rgb(photo.convert("CMYK"))
    assert np.abs(np.asarray(cmyk).astype(int) - rgb).mean() < 2
    sixteen = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 16-bit greyscale
    assert sixteen.mode.startswith("I;16")
    assert np.abs(np.asarray(to_rgb(sixteen))[..., 0].astype(int) - np.asarray(grey)).max() <= 1


def test_exif_rotation_is_applied(tmp_path, photo):
    small = photo.resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    small.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert Picture(str(tmp_path / "r.jpg")).open().size == (20, 40)


def test_eval_transform_equals_the_exported_processor(photo, image_dirs):
    cfg = VisionConfig(image_size=48, patch_size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    proc = Vision(cfg).image_processor()
    digit = Picture(str(sorted(image_dirs[0].glob("*.png"))[0])).open()
    for img in (photo, digit, photo.crop((0, 0, 300, 100))):
        ours = eval_transform(img, cfg)
        theirs = proc(img, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 48, 48)
        assert float((ours - theirs).abs().max()) < 1e-5


def test_train_transform_crops_flips_and_is_seeded(photo):
    a = train_transform(photo, CFG, np.random.default_rng(1))
    b = train_transform(photo, CFG, np.random.default_rng(1))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    outs = [train_transform(photo, CFG, np.random.default_rng(s)) for s in range(6)]
    assert len({o.sum().item() for o in outs}) == 6
    full = VisionConfig(image_size=32, patch_size=4, crop_scale=(1.0, 1.0), flip=False)
    # a full-area crop of a square image with no flip is the evaluation transform
    sq = photo.resize((64, 64))
    assert torch.allclose(train_transform(sq, full, np.random.default_rng(0)), eval_transform(sq, full), atol=1e-6)


def bad_image_folder(tmp_path, photo, image_dirs):
    """digit.png and cats/good.jpg, then truncated, empty, noise, 1x1 images and a text file."""
    d = tmp_path / "imgs"
    (d / "cats").mkdir(parents=True)
    photo.save(d / "cats" / "good.jpg")
    Image.open(sorted(image_dirs[0].glob("*.png"))[0]).save(d / "digit.png")
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "noise.webp").write_bytes(os.urandom(3000))
    Image.new("RGB", (1, 1)).save(d / "one.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_bad_images_are_counted_and_named(tmp_path, photo, image_dirs, caplog, monkeypatch):
    d = bad_image_folder(tmp_path, photo, image_dirs)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # the astronaut (512x512) is now a "bomb"
    photo.save(d / "bomb.png")
    good, bad = scan_images(find_images(str(d)), CFG)
    assert sorted(os.path.basename(p.name) for p in good) == ["digit.png"]
    reasons = {os.path.basename(n): why for n, why in bad}
    assert set(reasons) == {"good.jpg", "bomb.png", "truncated.png", "empty.jpg", "noise.webp", "one.png"}
    assert "DecompressionBomb" in reasons["bomb.png"] and "too small (1x1" in reasons["one.png"]
    with pytest.raises(BadImageError, match="data.strict"):
        scan_images(find_images(str(d)), CFG, strict=True)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        ds = build_image_dataset(DataConfig(path=str(d)), CFG, seed=0)
    assert len(ds) == 3 and "4 of 7 images skipped" in caplog.text and "truncated.png" in caplog.text


def test_image_that_fails_at_read_time_is_replaced_and_counted(tmp_path, image_dirs):
    files = sorted(image_dirs[0].glob("*.png"))[:3]
    copy = tmp_path / "gone.png"
    copy.write_bytes(files[0].read_bytes())
    ds = ImageDataset([Picture(str(copy))] + [Picture(str(f)) for f in files[1:]], CFG, seed=0)
    os.remove(copy)  # gone after the scan
    item = ds[0]
    assert ds.failed == [str(copy)] and item["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(BadImageError, match="gone.png"):
        ImageDataset(ds.pictures, CFG, 0, strict=True)[0]


def test_datasets_folder_and_arrays(tmp_path, image_dirs):
    import datasets

    files = sorted(image_dirs[0].glob("*.png"))[:4]
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files]}).cast_column("image", datasets.Image())
    ds.save_to_disk(tmp_path / "hf")
    pics = find_images(str(tmp_path / "hf"))
    assert len(pics) == 4 and np.array_equal(np.asarray(pics[2].open()), np.asarray(Picture(str(files[2])).open()))
    from sklearn.datasets import load_digits

    arr = (load_digits().images[:5] * 255 / 16).astype(np.uint8)
    np.save(tmp_path / "d.npy", arr)
    pics = find_images(str(tmp_path / "d.npy"))
    assert len(pics) == 5 and np.asarray(pics[1].open())[..., 0].tolist() == arr[1].tolist()
    np.save(tmp_path / "f.npy", arr.astype(np.float32))
    with pytest.raises(RecipeError, match="expected uint8"):
        find_images(str(tmp_path / "f.npy"))


def test_collator_masks_per_clone(image_dirs):
    files = sorted(image_dirs[0].glob("*.png"))[:3]
    examples = [ImageDataset([Picture(str(f)) for f in files], CFG, seed=0)[i] for i in range(3)]
    batch = ImageCollator(MaskConfig(kind="inverse_block", prob=0.8, length=3, adjust=0.07), CFG, clones=4)(examples)
    assert batch["inputs"]["pixel_values"].shape == (3, 3, 32, 32) and batch["mask"].shape == (12, 64)
    assert all(int(r.sum()) == 64 - int(64 * 0.2) for r in batch["mask"])
    assert not torch.equal(batch["mask"][0], batch["mask"][1])


def test_beit_masks_have_the_reference_statistics():
    rng = np.random.default_rng(0)
    counts = [int(beit_mask((14, 14), 0.612, 16, rng).sum()) for _ in range(200)]
    assert 110 <= np.mean(counts) <= 125  # 120 of 196 patches on average (BEiT / data2vec v1)
    m = beit_mask((14, 14), 0.612, 16, np.random.default_rng(1))
    from scipy import ndimage

    sizes = np.bincount(ndimage.label(m)[0].ravel())[1:]
    assert sizes.max() >= 16  # rectangles, not scattered patches


def test_streamed_folder_skips_and_names_bad_images_as_they_come(tmp_path, photo, image_dirs, caplog):
    d = bad_image_folder(tmp_path, photo, image_dirs)
    examples = []
    with caplog.at_level(logging.WARNING):
        for example in build_image_dataset(DataConfig(path=str(d), streaming=True), CFG, seed=0):
            if example["seed"][1] > 0:
                break
            examples.append(example)
    assert len(examples) == 2 and all(e["pixel_values"].shape == (3, 32, 32) for e in examples)  # digit, good
    for name in ("truncated.png", "empty.jpg", "noise.webp", "one.png"):
        assert f"skipped {d / name}" in caplog.text


@pytest.mark.parametrize("streaming", [False, True], ids=["loaded", "streamed"])
def test_a_bad_row_of_a_datasets_folder_is_named_by_its_index(streaming, tmp_path, image_dirs, caplog):
    """8 encoded images in 2 arrow files, row 5 (the second file's second) corrupt: both paths name
    it ``folder[5]``."""
    import datasets

    cells = [{"bytes": f.read_bytes(), "path": None} for f in sorted(image_dirs[0].glob("*.png"))[:8]]
    cells[5] = {"bytes": b"\x89PNG\r\n\x1a\n" + os.urandom(200), "path": None}
    ds = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    folder = tmp_path / "hf"
    ds.save_to_disk(folder, num_shards=2)
    assert len(list(folder.glob("*.arrow"))) == 2
    with caplog.at_level(logging.WARNING):
        built = build_image_dataset(DataConfig(path=str(folder), streaming=streaming, shuffle_buffer=0), CFG, seed=0)
        if streaming:
            it = iter(built)
            names = [next(it)["seed"][3] for _ in range(7)]  # the rows of the first pass
            assert names == [0, 1, 2, 3, 4, 6, 7]
        else:
            assert len(built) == 7
    assert f"skipped {folder}[5]" in caplog.text
    assert "[row]" not in caplog.text


def test_a_stream_of_only_bad_images_fails_naming_its_part(tmp_path, photo, image_dirs):
    """Every file of the stream is unusable: the first pass ends in a one-line error naming the
    part and its files, not in an endless search for a usable one (20 s alarm as the guard)."""
    import signal

    d = bad_image_folder(tmp_path, photo, image_dirs)
    for name in ("digit.png", "cats/good.jpg"):
        (d / name).unlink()

    class Endless(BaseException):  # not an Exception: the skipping code would catch that and go on
        pass

    def endless(signum, frame):
        raise Endless("the stream kept looking for a usable image for 20 s")

    previous = signal.signal(signal.SIGALRM, endless)
    signal.alarm(20)
    try:
        with pytest.raises(RecipeError, match=r"stream part 0 \(rank 0 of 1, worker 0 of 1\): none of its 4 rows is "
                                              rf"usable \({d / 'empty.jpg'}, "):
            next(iter(build_image_dataset(DataConfig(path=str(d), streaming=True, shuffle_buffer=0), CFG, seed=0)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
