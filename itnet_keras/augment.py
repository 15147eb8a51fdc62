"""Augmentation (SPEC s.7) with albumentations, applied to image and label together.

Every dataset is resized to its `image_size` divided by `scale` (image bilinear, label
nearest, both sampled at pixel centres; a no-op for CamVid at scale 1, 1024x2048 -> 512x1024
for Cityscapes). Training then follows one of two recipes (`RECIPES`):

- `paper` (the default; SPEC s.7): a random horizontal flip and, where the dataset has
  one, a random crop.
- `strong` (not in the paper; docs/training.md says where each step comes from): a random
  scale of 0.5 to 2.0, then padding up to the training crop (image 0, label the ignore
  value) and a random crop, the flip, and photometric changes: brightness and contrast,
  hue and saturation, gamma. The label is only ever resampled nearest.

The result of `Augmentation(...)(image, label, seed)` depends only on its arguments.
"""

import os
import random
import threading

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
import albumentations as A  # noqa: E402

from itnet_keras.presets import AUGMENT_RECIPES as RECIPES  # noqa: E402


def sample_seed(seed, epoch, index):
    """One integer seed per (run seed, epoch, sample index)."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


class SizeError(ValueError):
    """A size the data does not fit: `argument` names it ("scale", "crop", or the pipeline's
    "batch_size"); a scale's or crop's message begins with that name and the value."""

    def __init__(self, argument, message):
        super().__init__(message)
        self.argument = argument


def input_size(spec, scale=1):
    """(h, w) of the images after resizing, before cropping."""
    h, w = spec.image_size
    if scale < 1 or h % scale or w % scale:
        raise SizeError("scale", f"scale {scale} for {spec.name}: expected a positive integer "
                                 f"that divides the image size {h}x{w}")
    return h // scale, w // scale


def training_crop(spec, crop=None, scale=1):
    """The training crop (h, w): `crop`, else the dataset's crop divided by `scale`."""
    size = input_size(spec, scale)
    if crop is None:
        if spec.train_crop is None:
            return None
        crop = (spec.train_crop[0] // scale, spec.train_crop[1] // scale)
    crop = tuple(int(c) for c in crop)
    if crop[0] > size[0] or crop[1] > size[1]:
        raise SizeError("crop", f"crop {crop[0]}x{crop[1]} for {spec.name}: expected at most the "
                                f"image size {size[0]}x{size[1]} (scale {scale})")
    return crop


SCALE_RANGE = (0.5, 2.0)  # the `strong` recipe's random scale factors


def check_recipe(recipe):
    if recipe not in RECIPES:
        raise ValueError(f"augmentation recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    return recipe


def strong_steps(spec, crop):
    """The `strong` recipe's training steps after the resize; `crop` is (h, w)."""
    return [
        A.RandomScale(scale_limit=(SCALE_RANGE[0] - 1, SCALE_RANGE[1] - 1), interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
        A.PadIfNeeded(*crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=spec.ignore_label),
        A.RandomCrop(*crop),
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.5),
        A.RandomGamma(gamma_limit=(80, 120), p=0.5),
    ]


def build_transform(spec, training, crop=None, scale=1, recipe="paper"):
    """The albumentations pipeline for one dataset: resize, then the recipe's steps if training."""
    h, w = input_size(spec, scale)
    steps = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR,
                      mask_interpolation=cv2.INTER_NEAREST_EXACT)]
    if training and check_recipe(recipe) == "strong":
        steps += strong_steps(spec, training_crop(spec, crop, scale) or (h, w))
    elif training:
        steps.append(A.HorizontalFlip(p=0.5))
        crop = training_crop(spec, crop, scale)
        if crop is not None:
            steps.append(A.RandomCrop(*crop))
    return A.Compose(steps)


def normalize(image, spec):
    """uint8 image -> float32 per the dataset: CamVid and built-in [0, 1], Cityscapes [-1, 1]."""
    scale, offset = spec.normalization
    return image.astype(np.float32) * np.float32(scale) + np.float32(offset)


class Augmentation:
    """`(image uint8, label uint8, seed) -> (image float32, label uint8)`.

    Each thread keeps its own copy of the transform, reseeded before every sample, so
    the output does not depend on which worker runs it or in what order.
    """

    def __init__(self, spec, training, crop=None, scale=1, recipe="paper"):
        self.spec, self.training, self.crop, self.scale = spec, training, crop, scale
        self.recipe = check_recipe(recipe)
        if training:  # a scale or crop the images do not fit is refused here, not in a worker
            training_crop(spec, crop, scale)
        else:
            input_size(spec, scale)
        self._local = threading.local()

    def __call__(self, image, label, seed):
        transform = getattr(self._local, "transform", None)
        if transform is None:
            transform = self._local.transform = build_transform(
                self.spec, self.training, self.crop, self.scale, self.recipe)
        # One shared stream for all steps (set_random_seed would seed each step alike,
        # correlating the flip with the crop position).
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = transform(image=image, mask=label)
        return normalize(out["image"], self.spec), out["mask"]
