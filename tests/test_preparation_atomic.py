"""Every data preparation is atomic per site and checks its whole input first (issue 19.5 and the input part).

For each preparation: a re-run with other settings that fails after the first site (a corrupt file in the second
site, or a full disk while staging the second target) leaves the previous output byte-identical; what a killed
run leaves behind is removed by the next run, whose output then equals a clean run's. Then the HAM10000 inputs as
the public release is unpacked (images in two part folders, metadata without the ``dataset`` column, a missing
image) give the same output or one-line errors.
"""

from __future__ import annotations

import csv
import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from medfl.common import staging
from medfl.common.errors import DataError
from medfl.common.staging import StagedOutput
from medfl.federations.camelyon17 import preparation as camelyon17
from medfl.federations.camelyon17.demo import make_demo_camelyon17
from medfl.federations.dermoscopy import preparation as dermoscopy
from medfl.federations.isic2019 import preparation as isic2019
from medfl.federations.medmnist.splits import prepare_client_splits
from medfl.federations.nuclei import preparation as nuclei
from medfl.federations.nuclei.demo import make_demo_nuclei
from medfl.federations.prostate2d import preparation as prostate2d
from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate_saml import preparation as prostate_saml

HAM_MINI = "ham10000_mini"
IMAGES_PER_SOURCE = 24  # of the sample's 481, for speed


def tree(root: Path) -> dict:
    """Every file and folder under ``root``, hidden ones included, with each file's bytes."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if staging.LEFTOVER.match(p.name)]


def truncate(path: Path) -> None:
    """Keep the first half of a file: its header still reads, its content does not decode."""
    content = path.read_bytes()
    path.unlink()  # a symlink into the shared data is replaced, never written through
    path.write_bytes(content[: len(content) // 2])


def garbage(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"not an image at all")


def ham_input(shared: Path, root: Path, layout: str = "images") -> Path:
    """A HAM10000 folder: the first images of each source in the sample, its metadata rows and links to the
    images, in ``images/`` or split over the public release's ``HAM10000_images_part_1/`` and ``_2/``."""
    source = shared / HAM_MINI
    with (source / "HAM10000_metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    kept = [row for row in rows if sum(r["dataset"] == row["dataset"] for r in rows[: rows.index(row)])
            < IMAGES_PER_SOURCE]
    root.mkdir(parents=True)
    with (root / "HAM10000_metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(kept)
    for index, row in enumerate(kept):
        folder = root / ("images" if layout == "images" else f"HAM10000_images_part_{index % 2 + 1}")
        folder.mkdir(exist_ok=True)
        (folder / f"{row['image_id']}.jpg").symlink_to(source / "images" / f"{row['image_id']}.jpg")
    return root


def ham_image(root: Path, source: str, kept: bool = True) -> Path:
    """The first image of acquisition ``source`` (with a diagnosis PRR-FL keeps, if ``kept``)."""
    with (root / "HAM10000_metadata.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["dataset"] == source]
    row = next(r for r in rows if r["dx"] in dermoscopy.CLASS_INDEX or not kept)
    return next(root.glob(f"*/{row['image_id']}.jpg"))


@dataclass
class Preparation:
    """How to build a small input, run the preparation (``variant`` changes a setting), and break one file of its
    second site (``error``: what that gives)."""

    build: Callable[[Path, Path], Path]
    run: Callable[[Path, Path, int], object]
    corrupt: Callable[[Path], None]
    error: str


def _prostate_input(tmp: Path, shared: Path) -> Path:
    make_demo_federation(tmp / "raw", cases_per_site=3, seed=0, sites=("I2CVB", "MSD"))
    return tmp / "raw"


def _saml_input(tmp: Path, shared: Path) -> Path:
    make_demo_federation(tmp / "raw", cases_per_site=3, seed=0, sites=("BIDMC", "HK"))
    return tmp / "raw"


def _camelyon17_input(tmp: Path, shared: Path) -> Path:
    make_demo_camelyon17(tmp / "raw", slides_per_hospital=4, patches_per_slide=2, seed=0)
    return tmp / "raw"


def _nuclei_input(tmp: Path, shared: Path) -> Path:
    make_demo_nuclei(shared / "nuclei_dsb2018", tmp / "raw", tile_size=64, seed=0)
    return tmp / "raw"


def _medmnist_input(tmp: Path, shared: Path) -> Path:
    (tmp / "raw").mkdir()
    (tmp / "raw" / "breastmnist.npz").symlink_to(shared / "medmnist" / "breastmnist.npz")
    return tmp / "raw"


def _isic2019_run(ham: Path, out: Path, variant: int) -> None:
    isic2019.main(["demo", "--ham-dir", str(ham), "--out", str(out), "--image-size", str(8 + 4 * variant)])


PREPARATIONS = {
    "prostate2d": Preparation(
        _prostate_input,
        lambda raw, out, variant: prostate2d.prepare(raw, out, "saml", size=16 + 8 * variant),
        lambda raw: truncate(raw / "MSD" / "Case01.nii.gz"),
        r"\[MSD\] .*Case01\.nii\.gz: cannot read NIfTI file"),
    "prostate_saml": Preparation(
        _saml_input,
        lambda raw, out, variant: prostate_saml.prepare(raw, out, ("BIDMC", "HK"), size=16 + 8 * variant),
        lambda raw: truncate(raw / "HK" / "Case01.nii.gz"),
        r"\[HK\] .*Case01\.nii\.gz: cannot read NIfTI file"),
    "camelyon17": Preparation(
        _camelyon17_input,
        lambda raw, out, variant: camelyon17.prepare(raw, out, seed=variant),
        lambda raw: garbage(next(raw.glob("patches/patient_004_node_*/*.png"))),  # hospital2's first slide
        r"\[hospital2\] .*\.png: cannot read image header"),
    "nuclei": Preparation(
        _nuclei_input,
        lambda raw, out, variant: nuclei.prepare(raw, out, seed=variant),
        lambda raw: garbage(sorted(raw.glob("*/masks/*.png"))[-1]),  # the last site's
        r"\] .*masks/.*\.png: cannot read image"),
    "dermoscopy": Preparation(
        lambda tmp, shared: ham_input(shared, tmp / "ham"),
        lambda ham, out, variant: dermoscopy.prepare_federation(ham, out, image_size=8 + 4 * variant,
                                                                log=lambda message: None),
        lambda ham: truncate(ham_image(ham, "vidir_molemax")),  # clientB
        r"\[clientB\] .*\.jpg: cannot decode image \(OSError: image file is truncated"),
    "isic2019": Preparation(
        lambda tmp, shared: ham_input(shared, tmp / "ham"),
        _isic2019_run,
        lambda ham: truncate(ham_image(ham, "vidir_modern", kept=False)),  # centre 2, written after centre 1
        r"^error: \[center_2\] .*\.jpg: cannot decode image"),
    "medmnist": Preparation(
        _medmnist_input,
        lambda raw, out, variant: prepare_client_splits(raw / "breastmnist.npz", out, num_clients=3,
                                                        alpha=(1000.0, 0.5)[variant], dataset="breastmnist"),
        lambda raw: garbage(raw / "breastmnist.npz"),
        r"breastmnist\.npz: not a readable \.npz archive"),
}


@pytest.fixture(params=sorted(PREPARATIONS))
def preparation(request, tmp_path, shared_data):
    """``(spec, input folder, output folder holding a first run's output)``."""
    spec = PREPARATIONS[request.param]
    source = spec.build(tmp_path, shared_data)
    spec.run(source, tmp_path / "out", 0)
    return spec, source, tmp_path / "out"


def test_a_rerun_failing_on_a_corrupt_file_of_the_second_site_leaves_the_output_byte_identical(preparation):
    spec, source, out = preparation
    before = tree(out)
    spec.corrupt(source)
    with pytest.raises((DataError, SystemExit), match=spec.error):
        spec.run(source, out, 1)
    assert tree(out) == before


def test_a_rerun_failing_while_writing_the_second_target_leaves_the_output_byte_identical(preparation,
                                                                                           monkeypatch):
    spec, source, out = preparation
    before = tree(out)
    stage, calls = StagedOutput._stage, []

    def disk_full_on_the_second_target(self, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return stage(self, target)

    monkeypatch.setattr(StagedOutput, "_stage", disk_full_on_the_second_target)
    with pytest.raises((OSError, SystemExit), match="No space left"):  # a command says it in one line
        spec.run(source, out, 1)
    assert tree(out) == before


def test_the_leftovers_of_a_killed_run_are_removed_by_the_next_run(preparation, monkeypatch, tmp_path):
    spec, source, out = preparation
    before = tree(out)

    def killed(self):
        raise KeyboardInterrupt("killed before the swap")

    with monkeypatch.context() as patch:  # a kill: no swap, and nothing cleaned up
        patch.setattr(StagedOutput, "commit", killed)
        patch.setattr(StagedOutput, "discard", lambda self: None)
        with pytest.raises(KeyboardInterrupt):
            spec.run(source, out, 1)
    assert leftovers(out), "the simulated kill left temporary versions behind"
    assert {k: v for k, v in tree(out).items() if not any(map(staging.LEFTOVER.match, k.split("/")))} == before

    spec.run(source, out, 1)
    spec.run(source, tmp_path / "clean", 1)
    assert not leftovers(out)
    assert tree(out) == tree(tmp_path / "clean")


def test_prostate_pooled_datalist_is_the_union_of_the_swapped_in_sites(tmp_path):
    make_demo_federation(tmp_path / "raw", cases_per_site=3, seed=0, sites=("I2CVB", "MSD"))
    lists = tmp_path / "datalist_2D"
    prostate2d.prepare(tmp_path / "raw", tmp_path, "saml", sites=["MSD"], size=16)
    first_msd = json.loads((lists / "client_MSD.json").read_text())
    prostate2d.prepare(tmp_path / "raw", tmp_path, "saml", sites=["I2CVB"], size=16)
    # re-preparing one site with another split replaces its part of the union; the other site's part stays
    prostate2d.prepare(tmp_path / "raw", tmp_path, "saml", sites=["MSD"], size=16, seed=1)
    sites = [json.loads((lists / f"client_{site}.json").read_text()) for site in ("I2CVB", "MSD")]
    assert sites[1] != first_msd
    union = json.loads((lists / "client_All.json").read_text())
    assert union == {split: [item for site in sites for item in site[split]] for split in union}


def test_prostate_input_and_earlier_datalist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"absent: input folder not found"):
        prostate2d.prepare(tmp_path / "absent", tmp_path / "out", "saml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no site folders"):
        prostate2d.prepare(tmp_path / "empty", tmp_path / "out", "saml")
    make_demo_federation(tmp_path / "raw", cases_per_site=3, seed=0, sites=("MSD",))
    (tmp_path / "out" / "datalist_2D").mkdir(parents=True)
    (tmp_path / "out" / "datalist_2D" / "client_UCL.json").write_text("{")  # another command's, damaged
    with pytest.raises(DataError, match=r"client_UCL\.json: cannot read the datalist of an earlier command"):
        prostate2d.prepare(tmp_path / "raw", tmp_path / "out", "saml", size=16)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["client_UCL.json", "datalist_2D"]


def test_a_camelyon17_patch_of_another_size_is_named_before_anything_is_written(tmp_path):
    make_demo_camelyon17(tmp_path / "raw", slides_per_hospital=4, patches_per_slide=2, seed=0)
    patch = sorted((tmp_path / "raw").glob("patches/*/*.png"))[-1]
    Image.new("RGB", (64, 64)).save(patch)
    with pytest.raises(DataError, match=r"\[hospital5\] .*\.png: patch is 64x64 pixels, expected 96x96"):
        camelyon17.prepare(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path, monkeypatch):
    make_demo_federation(tmp_path / "raw", cases_per_site=3, seed=0, sites=("MSD",))
    argv = ["--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out"), "--size", "16"]
    prostate2d.main(argv)
    before = tree(tmp_path / "out")

    def disk_full(self, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(StagedOutput, "_stage", disk_full)
    with pytest.raises(SystemExit, match=r"^error: \[Errno 28\] No space left on device: '.*/dataset_2D/MSD'$"):
        prostate2d.main([*argv[:-1], "24"])
    assert tree(tmp_path / "out") == before


# --- HAM10000 as the public release is downloaded ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["dermoscopy", "isic2019"])
def test_the_two_part_image_layout_gives_the_same_output(name, tmp_path, shared_data):
    spec = PREPARATIONS[name]
    spec.run(ham_input(shared_data, tmp_path / "one"), tmp_path / "from_one_folder", 0)
    spec.run(ham_input(shared_data, tmp_path / "two", layout="parts"), tmp_path / "from_two_parts", 0)
    assert tree(tmp_path / "from_two_parts") == tree(tmp_path / "from_one_folder")


def _without_column(ham: Path, column: str) -> Path:
    metadata = ham / "HAM10000_metadata.csv"
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with metadata.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in rows[0] if c != column], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return metadata


def _one_line_error(name: str, ham: Path, out: Path, capsys) -> str:
    """Run the preparation's command; return its error output, which must be one line."""
    if name == "dermoscopy":
        assert dermoscopy.main(["--ham-root", str(ham), "--out", str(out)]) == 1
        message = capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as exit_info:
            isic2019.main(["demo", "--ham-dir", str(ham), "--out", str(out)])
        message = str(exit_info.value) + "\n"
    assert message.endswith("\n") and message.count("\n") == 1, message
    assert not out.exists(), "the input is checked before anything is written"
    return message


@pytest.mark.parametrize("name", ["dermoscopy", "isic2019"])
def test_metadata_without_the_dataset_column_is_a_one_line_error(name, tmp_path, shared_data, capsys):
    metadata = _without_column(ham_input(shared_data, tmp_path / "ham"), "dataset")
    message = _one_line_error(name, tmp_path / "ham", tmp_path / "out", capsys)
    assert message.startswith(f"error: {metadata}: missing column(s) ['dataset']; found ['lesion_id', ")
    assert "acquisition source" in message and "Harvard Dataverse" in message


@pytest.mark.parametrize("name", ["dermoscopy", "isic2019"])
def test_a_missing_image_is_a_one_line_error_naming_it(name, tmp_path, shared_data, capsys):
    ham = ham_input(shared_data, tmp_path / "ham", layout="parts")
    image = ham_image(ham, "rosendahl")
    image.unlink()
    message = _one_line_error(name, ham, tmp_path / "out", capsys)
    assert message == (f"error: {ham / 'HAM10000_metadata.csv'}: image {image.stem} listed here is in none of "
                       f"{ham / 'HAM10000_images_part_1'}/, {ham / 'HAM10000_images_part_2'}/\n")


def test_images_outside_the_known_folders_are_a_one_line_error(tmp_path, shared_data, capsys):
    ham = ham_input(shared_data, tmp_path / "ham")
    (ham / "images").rename(ham / "HAM10000_images")
    message = _one_line_error("dermoscopy", ham, tmp_path / "out", capsys)
    assert message == (f"error: {ham}: no image folder: expected images/ or HAM10000_images_part_1/ and "
                       "HAM10000_images_part_2/\n")
