"""HarmoFL data helpers: Pillow decoding with clear errors, seeded splits of exact sizes."""

import numpy as np
import pytest
from PIL import Image

from medfl.common.errors import DataError
from medfl.common.images import read_image
from medfl.common.splits import part_sizes, seeded_split, site_seed


@pytest.mark.parametrize("count, fractions, expected", [
    (10, (0.6, 0.2, 0.2), [6, 2, 2]),
    (4, (0.6, 0.2, 0.2), [2, 1, 1]),
    (16, (0.6, 0.2, 0.2), [10, 3, 3]),
    (4, (0.8, 0.2), [3, 1]),
    (0, (0.5, 0.5), [0, 0]),
])
def test_part_sizes_sum_to_count_by_largest_remainder(count, fractions, expected):
    assert part_sizes(count, fractions) == expected


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (1.2, -0.2), ()])
def test_part_sizes_reject_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        part_sizes(5, fractions)


def test_seeded_split_is_a_seeded_partition_independent_of_input_order():
    keys = [f"k{i}" for i in range(20)]
    parts = seeded_split(keys, (0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts] == [12, 4, 4]
    assert sorted(sum(parts, [])) == sorted(keys)
    assert seeded_split(list(reversed(keys)), (0.6, 0.2, 0.2), seed=3) == parts
    assert seeded_split(keys, (0.6, 0.2, 0.2), seed=4) != parts


def test_site_seed_depends_on_the_site_name_only():
    assert site_seed(0, "hospital1") == site_seed(0, "hospital1")
    assert site_seed(0, "hospital1") != site_seed(0, "hospital2")
    assert site_seed(0, "hospital1") != site_seed(1, "hospital1")


def test_read_image_keeps_16_bit_values(tmp_path):
    values = np.array([[0, 300], [4095, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a.tif")
    Image.fromarray(values).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        array = read_image(tmp_path / name)
        assert array.dtype == np.uint16 and array.dtype.isnative
        np.testing.assert_array_equal(array, values)


def test_read_image_errors_name_site_and_file(tmp_path):
    with pytest.raises(DataError, match=r"\[siteA\] .*missing\.png: image file not found"):
        read_image(tmp_path / "missing.png", "siteA")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"\[siteA\] .*bad\.png: cannot read image"):
        read_image(tmp_path / "bad.png", "siteA")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"\[siteA\] .*cut\.png: cannot read image"):
        read_image(tmp_path / "cut.png", "siteA")
    frames = [Image.fromarray(np.zeros((4, 4), np.uint8)) for _ in range(2)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"\[siteA\] .*stack\.tif: 2 frames or pages; expected a single 2D image"):
        read_image(tmp_path / "stack.tif", "siteA")
