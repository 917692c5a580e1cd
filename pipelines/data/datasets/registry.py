"""One declarative entry per dataset: task, official release, expected archives/checksums, splits, reader.

Counts are those of the official releases (checked at fetch; a mismatch fails the fetch). ``None`` means the
release does not fix a count we can check (e.g. 7-Scenes frames per scene vary by download). Where a paper tests
on a random subset (c-Glow: 2,000 CelebA test images, 5,500 7-Scenes frames), the reader draws it with a fixed
seed and the count here is the subset's. Checksums are
given where a reference copy was verified (``../shared/datasets/SHA256SUMS``: every archive there is listed);
a source whose file name is listed here must match it. Datasets whose split is not the official release's
(``sr_train``, ``celeba_subset``) state their rule beside the entry and in docs/datasets.md.
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
       {"test": 100}, {"BSD100.zip": "a81ab933cd2b594cb2af5aa98b1028485e293417869b38750029ab407ce8318e"},
       scale=2, citation="Martin et al. 2001 (BSDS300 test)"),
    # T91 + BSDS500 train (the "291" of Kim et al. 2016) less BSDS 302003 (= Set5 woman); 10 held out for
    # choosing the sampling temperature: every 29th from position 14 (readers.sr_train_files).
    _d("sr_train", "sr", "http://www.ifp.illinois.edu/~jyang29/ (T91); BSDS500 as bsds500", "read_sr_train",
       {"train": 280, "valid": 10},
       {"T91.zip": "a29c76924a72c7146f1eff1ea5b9e0bc05f05222a88d71d5ddf67bd33c36a513",
        "BSDS500.zip": "0b9fcf4162e4c2518b6b57b36f5d0083b7cdb058e6c9590a1a8a15a0dc5361e4"}, scale=2,
       citation="Yang et al. 2010 (T91); Arbelaez et al. 2011 (BSDS500 train)"),
    # c-Glow sec. 5.2: the first 200 horses train, the remaining 128 test.
    _d("horses", "horses", "https://www.msri.org/people/members/eranb/ (Weizmann Horse Database)",
       "read_horses", {"train": 200, "test": 128},
       {"weizmann_horse_db.tar.gz": None,
        "weizmann_horse_db.zip": "0a8296bf85099eb181ed59660fb27a39c2fcc8814910aca1fae1c96292146a03"},
       citation="Borenstein & Ullman 2002"),
    _d("lfw_parts", "parts", "http://vis-www.cs.umass.edu/lfw/part_labels/", "read_lfw_parts",
       {"train": 1500, "valid": 500, "test": 927},
       {"parts_lfw_funneled_gt_images.tgz": None, "parts_lfw_funneled_superpixels_mat.tgz": None,
        "lfw-funneled.tgz": None}, citation="Kae et al. 2013"),
    _d("bsds500", "denoise",
       "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
       "read_bsds500", {"train": 400, "valid": 32},
       {"BSR_bsds500.tgz": None, "BSDS500.zip": "0b9fcf4162e4c2518b6b57b36f5d0083b7cdb058e6c9590a1a8a15a0dc5361e4"},
       citation="Arbelaez et al. 2011"),
    _d("cbsd68", "denoise", "https://github.com/clausmichele/CBSD68-dataset", "read_cbsd68", {"test": 68},
       {"CBSD68.zip": "550e4a3c1a36dc6777ef0c5ec901fe26f1413be72714be9cca669eda37477de7"},
       citation="Roth & Black 2009 (color: Zhang et al. 2017)"),
    # c-Glow sec. 5.5: input = raw Kinect depth, target = temporal fusion of 9 frames with the release's poses
    # (readers.read_sevenscenes); train = every Chess frame, test = 5,500 other frames, a seeded choice.
    _d("sevenscenes", "depth",
       "https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/", "read_sevenscenes",
       {"train": None, "test": 5500}, {}, citation="Shotton et al. 2013; Newcombe et al. 2011"),
    # c-Glow sec. 5.6: "2,000 randomly selected images" test; ours: a seeded choice of 2,000 from the official
    # test partition (readers.CELEBA_TEST_COUNT, CELEBA_TEST_SEED); train and valid as the partition has them.
    _d("celeba", "inpaint", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html", "read_celeba",
       {"train": 162770, "valid": 19867, "test": 2000}, {"img_align_celeba.zip": None},
       citation="Liu et al. 2015"),
    # Not the official partition (the subset has none): image ids 1-8000 train, 8001-9000 valid, 9001-10000 test;
    # its test split is its own 1,000 images (not c-Glow's 2,000, which the subset cannot hold apart from train).
    _d("celeba_subset", "inpaint", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (first 10,000, 89x109)",
       "read_celeba_subset", {"train": 8000, "valid": 1000, "test": 1000},
       {"celeba_subset.zip": "d33b97ce97d718a08a96bdb8ab2bb846cac5fc75b985b2009c891e5ab95dc409"},
       citation="Liu et al. 2015"),
]}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
