"""Multi-site nuclei data for HarmoFL: layout, pairing by stem, checks, splits, crops/tiles, demo sites."""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medfl.common.errors import DataError
from medfl.common.images import read_image
from medfl.federations.nuclei.data import (
    NucleiDataset,
    binarise_mask,
    find_pairs,
    image_to_unit,
    load_pair,
    nuclei_datasets,
    split_site,
    tile_starts,
)
from medfl.federations.nuclei.demo import SITE_STYLES, make_demo_nuclei
from medfl.federations.nuclei.preparation import DATALIST_DIR, prepare
from medfl.harmofl.amp_norm import amplitude_spectrum

TILE = 128  # 16 tiles of the 512x512 source, 4 per site


@pytest.fixture(scope="module")
def demo(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("nuclei")
    make_demo_nuclei(shared_data / "nuclei_dsb2018", root / "raw", tile_size=TILE, seed=0)
    prepare(root / "raw", root)
    return root


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _site(root, stems, image_suffix=".png", mask_suffix=".png", size=(16, 20)):
    """A site whose image ``k`` is constant ``10 * k`` and whose mask ``k`` has ``k + 1`` foreground pixels."""
    for k, stem in enumerate(stems):
        _save(root / "images" / f"{stem}{image_suffix}", np.full(size, 10 * k, np.uint8))
        mask = np.zeros(size, np.uint16)
        mask.flat[: k + 1] = k + 1
        _save(root / "masks" / f"{stem}{mask_suffix}", mask)


def test_demo_layout_reads_back_with_the_real_masks(demo, shared_data):
    source_mask = read_image(shared_data / "nuclei_dsb2018" / "mask2d.tif")
    assert source_mask.dtype == np.uint16 and source_mask.shape == (512, 512)
    covered = np.zeros_like(source_mask, dtype=int)
    for site in SITE_STYLES:
        pairs = find_pairs(demo / "raw" / site, site)
        assert len(pairs) == (512 // TILE) ** 2 // len(SITE_STYLES)
        for stem, image_path, mask_path in pairs:
            row, col = int(stem[1:3]), int(stem[5:7])
            window = np.s_[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
            np.testing.assert_array_equal(read_image(mask_path), source_mask[window])  # instance ids kept
            covered[window] += 1
            image, mask = load_pair(image_path, mask_path, site)
            assert image.shape == (3, TILE, TILE) and image.dtype == np.float32
            assert 0 <= image.min() and image.max() <= 1
            np.testing.assert_array_equal(mask[0], source_mask[window] > 0)
    assert (covered == 1).all(), "the sites' tiles must cover the source exactly once"


def test_demo_is_deterministic(tmp_path, shared_data):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_demo_nuclei(shared_data / "nuclei_dsb2018", tmp_path / name, tile_size=256, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * 4
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert sorted(p.relative_to(tmp_path / "c") for p in (tmp_path / "c").rglob("*.png")) != files


def test_demo_sites_differ_in_colour_and_amplitude_spectrum(demo):
    images = {site: torch.stack([torch.from_numpy(load_pair(i, m, site)[0])
                                 for _, i, m in find_pairs(demo / "raw" / site, site)]) for site in SITE_STYLES}
    colour = {site: x.mean(dim=(0, 2, 3)) for site, x in images.items()}
    spectrum = {site: amplitude_spectrum(x).mean(0) for site, x in images.items()}
    for a, b in itertools.combinations(SITE_STYLES, 2):
        assert (colour[a] - colour[b]).abs().max() > 0.1, (a, b)
        sa, sb = spectrum[a].clone(), spectrum[b].clone()
        sa[:, 0, 0] = sb[:, 0, 0] = 0
        assert (sa - sb).norm() / ((sa + sb) / 2).norm() > 0.2, (a, b)


def test_prepared_datalists_are_seeded_disjoint_splits(demo, tmp_path):
    for site in SITE_STYLES:
        datalist = json.loads((demo / DATALIST_DIR / f"{site}.json").read_text())
        stems = {split: {item["image"].rsplit("/", 1)[1] for item in items} for split, items in datalist.items()}
        assert [len(stems[s]) for s in ("training", "validation", "testing")] == [2, 1, 1]
        assert len(set.union(*stems.values())) == 4
        for item in sum(datalist.values(), []):
            assert item["image"].startswith(f"{site}/images/") and item["label"].startswith(f"{site}/masks/")
    prepare(demo / "raw", tmp_path)
    for site in SITE_STYLES:
        again, first = (folder / DATALIST_DIR / f"{site}.json" for folder in (tmp_path, demo))
        assert again.read_text() == first.read_text()


def test_split_site_seeding_and_too_few_images():
    stems = [f"img{i:02d}" for i in range(20)]
    parts = split_site(stems, "siteA", seed=0)
    assert [len(parts[s]) for s in ("training", "validation", "testing")] == [12, 4, 4]
    assert split_site(stems[::-1], "siteA", seed=0) == parts
    assert split_site(stems, "siteA", seed=1) != parts
    assert split_site(stems, "siteB", seed=0) != parts
    with pytest.raises(DataError, match=r"\[siteA\] 2 image\(s\) are too few for a non-empty testing split"):
        split_site(stems[:2], "siteA")


def test_pairing_is_by_stem_not_by_listing_order(tmp_path):
    stems = ["b", "a10", "a2", "c"]
    _site(tmp_path / "s", stems[:2], image_suffix=".tif", mask_suffix=".png")
    _site(tmp_path / "s", stems[2:], image_suffix=".png", mask_suffix=".tif")
    (tmp_path / "s" / "images" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "s" / "masks" / "README.txt").write_text("ignored")
    pairs = find_pairs(tmp_path / "s", "s")
    assert [stem for stem, _, _ in pairs] == sorted(stems)
    for stem, image_path, mask_path in pairs:
        assert image_path.stem == mask_path.stem == stem
        image, mask = load_pair(image_path, mask_path, "s")
        k = stems.index(stem) % 2  # each half was written with k = 0, 1
        assert image[0, 0, 0] * 255 == pytest.approx(10 * k) and mask.sum() == k + 1


@pytest.mark.parametrize("problem, message", [
    ("missing mask", r"\[siteX\] .*images/b\.png: no mask 'masks/b'"),
    ("missing image", r"\[siteX\] .*masks/z\.png: no image 'images/z'"),
    ("duplicate stem", r"\[siteX\] .*images/a\.tif: two files with the stem 'a'"),
    ("no masks folder", r"\[siteX\] .*masks: folder not found"),
])
def test_layout_errors_name_site_and_file(tmp_path, problem, message):
    site = tmp_path / "siteX"
    _site(site, ["a", "b"])
    if problem == "missing mask":
        (site / "masks" / "b.png").unlink()
    elif problem == "missing image":
        _save(site / "masks" / "z.png", np.zeros((4, 4), np.uint8))
    elif problem == "duplicate stem":
        _save(site / "images" / "a.tif", np.zeros((16, 20), np.uint8))
    else:
        for path in (site / "masks").iterdir():
            path.unlink()
        (site / "masks").rmdir()
    with pytest.raises(DataError, match=message):
        find_pairs(site, "siteX")


def test_file_errors_name_site_and_file(tmp_path):
    _save(tmp_path / "img.png", np.zeros((16, 20, 3), np.uint8))
    _save(tmp_path / "small_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"\[siteY\] .*img\.png: image size \(16, 20\) does not match mask size "
                                        r"\(16, 16\) \(.*small_mask\.png\)"):
        load_pair(tmp_path / "img.png", tmp_path / "small_mask.png", "siteY")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"\[siteY\] .*corrupt\.png: cannot read image"):
        load_pair(tmp_path / "img.png", tmp_path / "corrupt.png", "siteY")
    _save(tmp_path / "rgb_mask.png", np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(DataError, match=r"\[siteY\] .*rgb_mask\.png: expected a one-channel mask"):
        load_pair(tmp_path / "img.png", tmp_path / "rgb_mask.png", "siteY")
    with pytest.raises(DataError, match=r"\[siteY\] .*img\.png: image has 3 channels, expected 1"):
        load_pair(tmp_path / "img.png", tmp_path / "rgb_mask.png", "siteY", channels=1)


def test_mask_values_out_of_range_are_errors(tmp_path):
    Image.fromarray(np.array([[0, -3], [1, 2]], np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(DataError, match=r"\[siteZ\] .*negative\.tif: mask value -3 out of range"):
        binarise_mask(read_image(tmp_path / "negative.tif"), tmp_path / "negative.tif", "siteZ")
    Image.fromarray(np.array([[0, 0.5], [1, 2]], np.float32)).save(tmp_path / "fraction.tif")
    with pytest.raises(DataError, match=r"\[siteZ\] .*fraction\.tif: mask holds non-integer values"):
        binarise_mask(read_image(tmp_path / "fraction.tif"), tmp_path / "fraction.tif", "siteZ")
    instance = np.array([[0, 7], [255, 0]], np.uint8)
    np.testing.assert_array_equal(binarise_mask(instance, "m.png"), [[[0, 1], [1, 0]]])


def test_intensity_scaling_of_16_bit_fluorescence(shared_data):
    path = shared_data / "nuclei_dsb2018" / "img2d.tif"
    raw = read_image(path)
    assert raw.dtype == np.uint16  # Pillow's I;16 mode, no tifffile needed
    by_type = image_to_unit(raw, path, channels=1)
    np.testing.assert_allclose(by_type[0], raw / 65535.0, rtol=1e-6)
    by_range = image_to_unit(raw, path, channels=3, intensity="minmax")
    assert by_range.shape == (3, 512, 512) and by_range.min() == 0 and by_range.max() == 1
    with pytest.raises(DataError, match=r"img2d\.tif: cannot scale int32 intensities"):
        image_to_unit(raw.astype(np.int32), path, channels=1)
    rgba = np.dstack([np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4), np.uint8)])
    assert image_to_unit(rgba, "x.png").shape == (3, 4, 4)  # alpha dropped


def test_tiles_cover_each_image_and_random_crops_are_windows(tmp_path):
    assert tile_starts(128, 48) == [0, 48, 80] and tile_starts(96, 48) == [0, 48] and tile_starts(40, 48) == [0]
    image = np.arange(100 * 70, dtype=np.float32).reshape(100, 70) / (100 * 70)
    Image.fromarray(image).save(tmp_path / "ramp.tif")
    _save(tmp_path / "ramp_mask.png", (np.arange(100 * 70).reshape(100, 70) % 3 == 0).astype(np.uint8))
    items = [{"image": "ramp.tif", "label": "ramp_mask.png"}]
    whole = NucleiDataset(items, tmp_path, "s", channels=1)[0]
    tiles = NucleiDataset(items, tmp_path, "s", channels=1, patch_size=48)
    assert len(tiles) == len(tile_starts(100, 48)) * len(tile_starts(70, 48)) == 6
    rebuilt = torch.zeros_like(whole["image"])
    for k, (_, y, x) in enumerate(tiles.index):
        item = tiles[k]
        assert item["image"].shape == item["label"].shape == (1, 48, 48)
        rebuilt[:, y : y + 48, x : x + 48] = item["image"]
        torch.testing.assert_close(item["label"], whole["label"][:, y : y + 48, x : x + 48])
    torch.testing.assert_close(rebuilt, whole["image"])
    crops = NucleiDataset(items, tmp_path, "s", channels=1, patch_size=32, random_crop=True)
    torch.manual_seed(0)
    first = crops[0]
    flat = whole["image"][0]
    y, x = divmod(int(torch.argmin(torch.abs(flat - first["image"][0, 0, 0])).item()), 70)
    torch.testing.assert_close(first["image"], whole["image"][:, y : y + 32, x : x + 32])
    torch.testing.assert_close(first["label"], whole["label"][:, y : y + 32, x : x + 32])
    torch.manual_seed(0)
    torch.testing.assert_close(crops[0]["image"], first["image"])
    padded = NucleiDataset(items, tmp_path, "s", channels=1, patch_size=128, random_crop=True)[0]
    assert padded["image"].shape == (1, 128, 128) and padded["image"][:, 100:].abs().sum() == 0
    with pytest.raises(ValueError, match="random_crop needs a patch_size"):
        NucleiDataset(items, tmp_path, "s", random_crop=True)


def test_site_datasets_from_the_prepared_demo(demo):
    seen = []
    datasets = nuclei_datasets(demo / DATALIST_DIR, demo / "raw", "confocal_green", patch_size=64,
                               train_transform=lambda item: seen.append(1) or item)
    assert {split: len(d) for split, d in datasets.items()} == {"training": 2, "validation": 4, "testing": 4}
    for split, dataset in datasets.items():
        item = dataset[0]
        assert item["image"].shape == (3, 64, 64) and item["label"].shape == (1, 64, 64)
        assert item["image"].dtype == item["label"].dtype == torch.float32
        assert set(item["label"].unique().tolist()) <= {0.0, 1.0}
    assert seen == [1], "the training transform runs on training items only"
    with pytest.raises(DataError, match=r"\[nowhere\] .*nowhere\.json: datalist not found"):
        nuclei_datasets(demo / DATALIST_DIR, demo / "raw", "nowhere")
