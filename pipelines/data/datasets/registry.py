"""One declarative entry per dataset: task, official release, expected archives/checksums, splits, reader.

Counts are those of the official releases (checked at fetch; a mismatch fails the fetch). ``None`` means the
release does not fix a count we can check (e.g. 7-Scenes frames per scene vary by download). Checksums are
given where a reference copy was verified (/work/shared/datasets/SHA256SUMS); a source whose file name is
listed here must match it.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: what it is for, where it lives, and what a correct copy looks like."""

    name: str
    task: str  # key of pipelines.tasks.TASKS
    url: str  # where the official release lives
    reader: str  # function name in pipelines.data.datasets.readers
    splits: dict[str, int | None]  # split -> expected sample count (official release)
    archives: dict[str, str | None] = field(default_factory=dict)  # file name -> sha256 (None: unknown)
    scale: int | None = None  # SR factor used to make input.png
    citation: str = ""


def _d(*args, **kwargs) -> DatasetSpec:
    spec = DatasetSpec(*args, **kwargs)
    return spec


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    _d("drive", "vessel", "https://drive.grand-challenge.org/", "read_drive", {"train": 20, "test": 20},
       {"DRIVE.zip": "ff4e6a372cffc4d437c64ca85e96c4a6ac1ea0186d9945e0a02679760f0b74ff"},
       citation="Staal et al. 2004"),
    _d("imagenet32", "sr", "https://image-net.org/download-images (Downsampled ImageNet 32x32, npz)",
       "read_imagenet_npz", {"train": 1281167, "valid": 50000},
       {"Imagenet32_train_npz.zip": None, "Imagenet32_val_npz.zip": None}, scale=2,
       citation="Chrabaszcz, Loshchilov, Hutter 2017"),
    _d("imagenet64", "sr", "https://image-net.org/download-images (Downsampled ImageNet 64x64, npz)",
       "read_imagenet_npz", {"train": 1281167, "valid": 50000},
       {"Imagenet64_train_part1_npz.zip": None, "Imagenet64_train_part2_npz.zip": None,
        "Imagenet64_val_npz.zip": None}, scale=2, citation="Chrabaszcz, Loshchilov, Hutter 2017"),
    _d("set5", "sr", "https://people.rennes.inria.fr/Aline.Roumy/results/SR_BMVC12.html", "read_sr_benchmark",
       {"test": 5}, {"Set5.zip": "7a1308853dedc15567113c440a51e4be88c9f2577f58f62f605da272878a4112"}, scale=2,
       citation="Bevilacqua et al. 2012"),
    _d("set14", "sr", "https://sites.google.com/site/romanzeyde/research-interests", "read_sr_benchmark",
       {"test": 14}, {"Set14.zip": None}, scale=2, citation="Zeyde et al. 2010"),
    _d("bsd100", "sr", "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/", "read_sr_benchmark",
       {"test": 100}, {"BSD100.zip": None}, scale=2, citation="Martin et al. 2001 (BSDS300 test)"),
    _d("horses", "horses", "https://www.msri.org/people/members/eranb/ (Weizmann Horse Database)",
       "read_horses", {"train": 200, "test": 128}, {"weizmann_horse_db.tar.gz": None},
       citation="Borenstein & Ullman 2002"),
    _d("lfw_parts", "parts", "http://vis-www.cs.umass.edu/lfw/part_labels/", "read_lfw_parts",
       {"train": 1500, "valid": 500, "test": 927},
       {"parts_lfw_funneled_gt_images.tgz": None, "parts_lfw_funneled_superpixels_mat.tgz": None,
        "lfw-funneled.tgz": None}, citation="Kae et al. 2013"),
    _d("bsds500", "denoise",
       "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
       "read_bsds500", {"train": 400}, {"BSR_bsds500.tgz": None}, citation="Arbelaez et al. 2010"),
    _d("cbsd68", "denoise", "https://github.com/clausmichele/CBSD68-dataset", "read_cbsd68", {"test": 68},
       {"CBSD68.zip": "550e4a3c1a36dc6777ef0c5ec901fe26f1413be72714be9cca669eda37477de7"},
       citation="Roth & Black 2009 (color: Zhang et al. 2017)"),
    _d("sevenscenes", "depth",
       "https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/", "read_sevenscenes",
       {"train": None, "test": None}, {}, citation="Shotton et al. 2013; Newcombe et al. 2011"),
    _d("celeba", "inpaint", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html", "read_celeba",
       {"train": 162770, "valid": 19867, "test": 19962}, {"img_align_celeba.zip": None},
       citation="Liu et al. 2015"),
]}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
