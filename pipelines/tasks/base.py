"""The contract every paper task fulfils: ``Task`` (sample preparation, display, defaults) and ``Scorer``.

A task turns one decoded shard sample into what the model sees, ``Sample(y, x, mask, extras)``
(docs/architecture.md has the target conventions of ``y``), scores predictions with its paper's protocol, and
draws ``y`` for sample grids. ``Task.prepare`` runs the steps every task shares, in one fixed order, and calls
the task's hooks where tasks differ:

1. ``read``: target, stored input, mask and extra members of the decoded sample (data space, HWC);
2. ``resize`` to ``size`` (argument, else the task's default), when set (depth crops instead, drawing from
   ``rng``: resizing a frame would blend its invalid zeros into ``y``);
3. the joint affine warp (DRIVE augmentation) when training with ``augment`` (default: the task's ``augment``),
   straight into the ``patch`` when ``x`` shares ``y``'s grid; else, when training with the ``flip`` option,
   a left-right mirror of every array with probability 1/2 (the horses of c-Glow Table 1 face both ways);
4. an aligned random ``patch`` when training (the window is drawn on ``x``'s grid, ``y``'s / ``input_scale``);
5. ``derive_input``: inputs made from ``y`` (noise, holes), seeded by (key, seed, epoch);
6. ``select_target``: the part of ``y`` the model predicts (inpainting: the hidden block; else all of it);
7. padding to ``pad_multiple`` (``x``) and ``pad_multiple * input_scale`` (``y``, mask, extras), HWC -> CHW:
   zeros, or for ``y`` and ``x`` the edge repeated with the ``pad_mode: edge`` option (mask and extras always
   zeros). The extra ``unpadded`` (1, H, W) marks ``y``'s own pixels (1) against the padding (0): bits/dim
   counts only those (``pipelines.evaluation.split``), and no score reads the padding.

Steps 2 (depth), 3 (the warp, or the flip's coin when ``flip`` is on) and 4 draw from the one generator ``rng``
in that order; step 5 draws from a fresh
``key_rng(key, seed, epoch)``, so the noise of a sample does not depend on its crop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from flowlib import metrics
from pipelines.data.augment import drive_augment, random_patch
from pipelines.data.imaging import PAD_MODES, hwc, imresize, pad_to_multiple, resize_nearest
from pipelines.data.shards import ShardError

TARGETS = ("image8", "binary", "categorical", "continuous")
#: The extra every prepared sample carries: 1 on ``y``'s own pixels, 0 on the padding (step 7).
UNPADDED = "unpadded"


@dataclass
class Sample:
    """One prepared sample: ``y`` (C, H, W) in data space, ``x`` (Cx, Hx, Wx) in [0, 1], ``mask`` (1, H, W) of
    the scored region, ``extras`` name -> (C, H, W) on ``y``'s grid (e.g. LFW super-pixel ids)."""

    y: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def as_numpy(array) -> np.ndarray:
    """A tensor or array as float64 numpy (tensors detached and moved to the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def valid_box(mask: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Bounding box of the valid region (the loader pads images; scores ignore the padding)."""
    if mask is None or not mask.any():
        return slice(0, shape[0]), slice(0, shape[1])
    rows, cols = np.nonzero(mask)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def display_input(x) -> np.ndarray:
    """How every task draws its input ``x`` (C, H, W) in [0, 1]: ``(H, W, 3)`` float in [0, 1] (one channel grey)."""
    a = np.clip(np.nan_to_num(as_numpy(x)), 0.0, 1.0)
    return rgb_image(a)


def rgb_image(a: np.ndarray) -> np.ndarray:
    """A (1 or 3+, H, W) array already in [0, 1] as (H, W, 3): one channel repeated, else the first three."""
    if a.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {a.shape}")
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    if a.shape[0] != 3:
        raise ValueError(f"cannot draw a {a.shape[0]}-channel image as RGB (shape {a.shape})")
    return np.ascontiguousarray(a.transpose(1, 2, 0))


class Scorer:
    """One split's per-image results, gathered image by image and summarised with the task's protocol.

    ``add_likelihood`` takes the model's log-likelihoods (nats); ``add`` a batch of model outputs (what
    ``StructuredModel.predict`` returns, plus individual ``samples``); ``add_prediction`` one image as numpy
    arrays in data space, the entry point of `cnf score` and of ``add``. Subclasses implement ``score_image``
    (per-image work) and ``split_metrics`` (metrics over the whole split); per-image values recorded with
    ``record`` are averaged over images and kept as ``<name>_per_image``.
    """

    #: individual samples per image the protocol needs (``add``'s ``samples``); 0: none
    scatter_samples: ClassVar[int] = 0

    def __init__(self) -> None:
        self.ll: list[float] = []
        self.dims: list[int] = []
        self.values: dict[str, list[float]] = {}
        self.keys: list[str] = []
        self.count = 0

    def record(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def add_likelihood(self, ll, num_dims: int) -> None:
        """Per-sample log-likelihoods ``ll`` (B,) in nats of targets with ``num_dims`` dimensions each."""
        values = as_numpy(ll).tolist()
        self.ll.extend(values)
        self.dims.extend([int(num_dims)] * len(values))

    def add(self, batch: Mapping[str, Any], out: Mapping[str, Any], samples: Sequence[Any] = ()) -> None:
        """A loader batch ``{"x", "y", "mask", "key", extras...}`` and the model's ``out = {"mean", "prediction"}``."""
        y, x = batch["y"], batch["x"]
        mask = batch.get("mask")
        if out["mean"].shape[0] != y.shape[0] or out["mean"].shape[-2:] != y.shape[-2:]:
            raise ValueError(f"{type(self).__name__}: the model predicts {tuple(out['mean'].shape)} for targets "
                             f"{tuple(y.shape)} (keys {list(batch.get('key', []))}); a model fixed to its training "
                             "shape cannot score these images (set eval sizes to match, or make the model "
                             "size-agnostic)")
        keys = list(batch.get("key", []))
        extras = {k: v for k, v in batch.items() if k not in ("x", "y", "mask", "key", "epoch")}
        for i in range(y.shape[0]):
            self.add_prediction(keys[i] if i < len(keys) else None, as_numpy(out["prediction"][i]),
                                as_numpy(y[i]), as_numpy(mask[i, 0]) > 0.5 if mask is not None else None,
                                mean=as_numpy(out["mean"][i]), samples=[as_numpy(s[i]) for s in samples],
                                x=as_numpy(x[i]), extras={k: as_numpy(v[i]) for k, v in extras.items()})

    def add_prediction(self, key: str | None, prediction: np.ndarray, target: np.ndarray,
                       mask: np.ndarray | None = None, *, mean: np.ndarray | None = None,
                       samples: Sequence[np.ndarray] = (), x: np.ndarray | None = None,
                       extras: Mapping[str, np.ndarray] | None = None) -> None:
        """One image: ``prediction`` and ``target`` (C, H, W) in data space, ``mask`` (H, W) bool of the valid
        region (None: all of it), ``mean`` the soft map (default ``prediction``), ``samples`` individual
        samples (C, H, W), ``x`` the input (C, Hx, Wx), ``extras`` (C, H, W) arrays such as super-pixels."""
        if key is not None:
            self.keys.append(key)
        self.count += 1
        prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
        self.score_image(prediction, target, None if mask is None else np.asarray(mask, bool),
                         mean=prediction if mean is None else np.asarray(mean, np.float64), samples=samples,
                         x=x, extras=dict(extras or {}))

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        raise NotImplementedError(f"{type(self).__name__} scores no images")

    def split_metrics(self) -> dict:
        """Metrics defined over the whole split (F-score of averaged P/R, IoU, super-pixel accuracy)."""
        return {}

    def summary(self) -> dict:
        """``n``, ``bpd`` and ``nll_nats`` (when likelihoods were added), the per-image means, split metrics, ``keys``."""
        out: dict[str, Any] = {"n": self.count}
        if self.ll:
            out["bpd"] = metrics.dataset_bits_per_dim(self.ll, self.dims)
            out["nll_nats"] = float(-np.mean(self.ll))
        for name, vals in self.values.items():
            if vals:
                out[name] = float(np.mean(vals))  # a perfect image (PSNR inf) makes the mean inf, as it should
                out[f"{name}_per_image"] = vals
        if self.count:
            out.update(self.split_metrics())
        out["keys"] = self.keys
        return out


@dataclass(frozen=True)
class Task:
    """A paper task: what it predicts (``target``, docs/architecture.md), its defaults, and its protocol.

    Fields are the task's options (``make_loader(..., **options)``, ``data.options`` in params.yaml); each task
    module adds its own. Subclasses override the ``prepare`` hooks they need, ``scorer`` and, where the target
    convention does not draw ``y`` well, ``display``.
    """

    name: str
    target: str  # image8 | binary | categorical | continuous
    num_classes: int | None = None
    size: int | None = None  # default square resize of the raw sample (c-Glow resizes; sizes lost in extraction)
    flip: bool = False  # training: mirror y, x, mask left-right with probability 1/2 (step 3; off: bitwise as before)
    # step 7: y and x padded with zeros (the papers') or their edge repeated ("edge"); mask and extras: zeros
    pad_mode: str = "zeros"

    #: the metrics tables and sweeps report, in order (bits/dim first)
    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd",)
    #: DRIVE augmentation when training, unless ``augment`` says otherwise
    augment: ClassVar[bool] = False
    #: extra shard members carried through preparation: name -> member (e.g. super-pixel ids)
    extra_members: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"task {self.name!r}: target {self.target!r} is not one of {TARGETS}")
        if self.target == "categorical" and not self.num_classes:
            raise ValueError(f"task {self.name!r}: a categorical target needs num_classes")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"task {self.name!r}: option pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")

    # ------------------------------------------------------------------------------------------- options
    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The option names ``with_options`` accepts."""
        return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name not in ("name", "target")))

    def with_options(self, **options) -> "Task":
        """This task with some options changed; unknown names raise a ``TypeError`` listing the known ones."""
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise TypeError(f"unknown task option(s) {unknown} for task {self.name!r}; known: {list(self.options())}")
        return dataclasses.replace(self, **options)

    @property
    def discrete(self) -> bool:
        """Label targets (resized and warped by nearest neighbour)."""
        return self.target in ("binary", "categorical")

    @property
    def input_scale(self) -> int:
        """How many ``y`` pixels one ``x`` pixel spans along each axis (the SR factor; 1 elsewhere)."""
        return 1

    # ------------------------------------------------------------------------------------------- samples
    def prepare(self, decoded: Mapping[str, Any], *, key: str, train: bool, rng: np.random.Generator,
                seed: int = 0, epoch: int = 0, patch: int | None = None, size: int | None = None,
                pad_multiple: int | None = None, augment: bool | None = None) -> Sample:
        """One decoded shard sample (member -> array, :func:`pipelines.data.shards.decode_member`) as a ``Sample``.

        The steps are listed in the module docstring. ``rng`` is ``key_rng(key, seed, epoch)``; ``epoch`` is 0
        outside training. ``patch`` crops training samples only.
        """
        y, x, mask, extras = self.read(decoded, key)
        size = size or self.size
        if size:
            y, x, mask, extras = self.resize(y, x, mask, extras, size, rng=rng)
        scale = self.input_scale
        augmenting = train and (augment if augment is not None else self.augment)
        if augmenting:
            arrays = {"y": y, "mask": mask, **({"x": x} if x is not None else {}), **extras}
            warp = {}
            if patch and scale == 1:
                # Warp straight into the patch around a random centre: the cost is the patch's, not the image's.
                h, w = y.shape[:2]
                warp = {"out_shape": (patch, patch), "center": (int(rng.integers(0, h)), int(rng.integers(0, w)))}
            warped = drive_augment(arrays, rng, discrete={"mask", *extras} | ({"y"} if self.discrete else set()),
                                   **warp)
            y, mask, x = warped["y"], warped["mask"], warped.get("x")
            extras = {k: warped[k] for k in extras}
        elif train and self.flip and rng.random() < 0.5:
            y, mask = y[:, ::-1], mask[:, ::-1]
            x = None if x is None else x[:, ::-1]
            extras = {k: v[:, ::-1] for k, v in extras.items()}
        if train and patch and not (augmenting and scale == 1):
            y, x, mask, extras = random_patch(y, x, mask, extras, patch, scale, rng)
        x, mask = self.derive_input(y, x, mask, key=key, seed=seed, epoch=epoch)
        y, mask = self.select_target(y, mask)
        extras = {**extras, UNPADDED: np.ones(y.shape[:2] + (1,), np.float32)}
        # Padding for the squeeze layers (Winkler et al. 2019, App. A: DRIVE), done in the HWC -> CHW copy.
        lr_multiple = pad_multiple if pad_multiple and pad_multiple > 1 else 1
        hr_multiple = lr_multiple * scale
        return Sample(y=pad_to_multiple(y, hr_multiple, self.pad_mode),
                      x=pad_to_multiple(x, lr_multiple, self.pad_mode), mask=pad_to_multiple(mask, hr_multiple),
                      extras={k: pad_to_multiple(v, hr_multiple) for k, v in extras.items()})

    def read(self, decoded: Mapping[str, Any], key: str):
        """``(y, x, mask, extras)`` HWC float32 from the shard members: ``target.npy`` or ``target.png`` (images
        as continuous targets in [0, 1]), ``input.png`` / 255 (None when absent), ``mask.png`` (else ones)."""
        if "target.npy" in decoded:
            y = hwc(decoded["target.npy"].astype(np.float32))
        elif "target.png" in decoded:
            y = hwc(decoded["target.png"].astype(np.float32))
        else:
            raise ShardError(f"{key}: no target.png or target.npy in the sample")
        if self.target == "continuous" and "target.png" in decoded:
            y = y / 255.0
        x = hwc(decoded["input.png"].astype(np.float32) / 255.0) if "input.png" in decoded else None
        mask = hwc(decoded["mask.png"].astype(np.float32)) if "mask.png" in decoded else np.ones(
            y.shape[:2] + (1,), np.float32)
        extras = {name: hwc(decoded[member].astype(np.float32))
                  for name, member in self.extra_members.items() if member in decoded}
        return y, x, mask, extras

    def resize(self, y, x, mask, extras, size: int, *, rng: np.random.Generator):
        """Square ``size`` x ``size``: MATLAB bicubic for images (8-bit targets rounded), nearest for labels.

        ``rng`` is the sample's generator, for tasks that crop rather than resize (depth)."""
        shape = (size, size)
        y = hwc(resize_nearest(y, shape) if self.discrete else imresize(y, output_shape=shape))
        y = y.astype(np.float32)
        if self.target == "image8":
            y = np.clip(np.round(y), 0, 255).astype(np.float32)
        if x is not None:
            x = np.clip(hwc(imresize(x, output_shape=shape)), 0, 1).astype(np.float32)
        mask = hwc(resize_nearest(mask, shape))
        extras = {k: hwc(resize_nearest(v, shape)) for k, v in extras.items()}
        return y, x, mask, extras

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        """``(x, mask)`` after cropping; the stored input by default, which must exist."""
        if x is None:
            raise ShardError(f"{key}: task {self.name!r} needs input.png in the sample")
        return x, mask

    def select_target(self, y, mask):
        """``(y, mask)`` the model predicts and is scored on, after ``derive_input``: all of ``y`` by default."""
        return y, mask

    # ---------------------------------------------------------------------------------- scoring, display
    def scorer(self) -> Scorer:
        """A fresh ``Scorer`` with this task's paper protocol."""
        raise NotImplementedError(f"task {self.name!r} has no scoring protocol")

    def read_prediction(self, image: np.ndarray) -> np.ndarray:
        """A prediction image file (as ``read_image`` returns it) in data space (C, H, W), for `cnf score`."""
        raise NotImplementedError(f"task {self.name!r} does not score prediction files")

    def display(self, y) -> np.ndarray:
        """How ``y`` (C, H, W) in data space is drawn in grids: ``(H, W, 3)`` float in [0, 1].

        By target: 8-bit images / 255, labels / (K - 1), continuous values as they are when they lie in [0, 1],
        else stretched to their finite range; single channels grey, non-finite values (an overflowed draw) as 0.
        """
        a = as_numpy(y)
        if self.target == "image8":
            a = a / 255.0
        elif self.target == "categorical":
            a = a / max(self.num_classes - 1, 1)
        elif self.target == "continuous" and np.isfinite(a).any():
            finite = a[np.isfinite(a)]
            lo, hi = float(finite.min()), float(finite.max())
            if hi > lo and (lo < 0 or hi > 1):
                a = (a - lo) / (hi - lo)
        return rgb_image(np.clip(np.where(np.isfinite(a), a, 0.0), 0.0, 1.0))
