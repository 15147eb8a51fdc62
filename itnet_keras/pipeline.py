"""Batches for `model.fit` / `evaluate`: a `keras.utils.PyDataset` over a dataset split.

Training shuffles once per epoch from (seed, epoch) and augments each sample from
(seed, epoch, sample index), so a resumed run sees exactly the batches of the
uninterrupted one. Train with

    model.fit(data, initial_epoch=e, shuffle=False, callbacks=[SyncEpoch(data)], ...)

`SyncEpoch` sets `data.epoch` from Keras' epoch number; `shuffle=False` because the
order is ours (Keras would reorder batches with Python's global `random`).
"""

import math
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from itnet_keras.augment import Augmentation, SizeError, sample_seed
from itnet_keras.datasets import load_split


def label_dtype(spec):
    """uint8 where every label id of the dataset (its classes and the ignore label) fits,
    else int32: a training step then sends the device a quarter of the label bytes, once per
    output (the losses and metrics cast them)."""
    return np.uint8 if max(spec.num_classes - 1, spec.ignore_label) <= 255 else np.int32


class SegmentationDataset(keras.utils.PyDataset):
    """Batches `(images float32 [B, H, W, 3], labels [B, H, W])` of one `Split`, the labels
    of `label_dtype(spec)`.

    Targets are a dict `{name: labels}` when `output_names` names more than one output (one
    loss per model output), else the labels. `epoch` selects the shuffle and augmentation; it advances at each
    `on_epoch_begin` / `on_epoch_end` pair and can be set directly (see `SyncEpoch`).

    `workers` threads augment the samples of each batch together, inside `__getitem__`. Keras'
    own workers (a queue of prefetched batches) are not used: its queue hands the batches left
    over when an epoch ends to the next epoch (the JAX trainer's peek at the first batch leaves
    some before epoch 0), so every epoch would start with batches of the one before.

    With `pad_last` (evaluation only), a last incomplete batch is filled up with images of
    zeros (normalized values: black for CamVid, grey for Cityscapes) labelled with the
    ignore value, which add nothing to the confusion matrices (the mIoU) nor to that
    batch's loss, the mean over its valid pixels: every batch then
    has one shape, which JAX compiles once and its data parallelism can split over the
    devices. Keras averages the batches' losses weighted by their size, so `fit`'s val loss
    counts the last batch as full (CamVid val: 8/104 instead of 5/101); nothing chooses by it.
    """

    def __init__(self, split, augmentation, batch_size=8, training=False, seed=0,
                 output_names=None, workers=1, pad_last=False, **kwargs):
        super().__init__(workers=1, use_multiprocessing=False, **kwargs)
        self.threads = ThreadPoolExecutor(workers) if workers > 1 else None
        self.split, self.spec, self.augmentation = split, split.spec, augmentation
        self.batch_size, self.training, self.seed = batch_size, training, seed
        self.pad_last = pad_last and not training  # training drops the incomplete batch
        self.output_names = list(output_names) if output_names else None
        self.epoch = 0
        self._in_epoch = False
        self._order = (None, None)  # (epoch, permutation)
        if len(self) == 0:
            raise SizeError("batch_size", f"{self.spec.name} {split.split} has {len(split)} samples: "
                            f"expected at least batch_size {batch_size}"
                            + (" for training (the last incomplete batch is dropped)"
                               if training else ""))

    def __len__(self):
        count = len(self.split)
        return count // self.batch_size if self.training else math.ceil(count / self.batch_size)

    def order(self):
        """Sample indices of the current epoch: a permutation in training, else in order."""
        if not self.training:
            return np.arange(len(self.split))
        epoch, permutation = self._order
        if epoch != self.epoch:
            permutation = np.random.default_rng((self.seed, self.epoch)).permutation(
                len(self.split))
            self._order = (self.epoch, permutation)
        return permutation

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        epoch = self.epoch
        indices = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        def sample(i):
            return self.augmentation(*self.split[i], sample_seed(self.seed, epoch, int(i)))

        images, labels = zip(*(self.threads.map(sample, indices) if self.threads else map(sample, indices)))
        images, labels = np.stack(images), np.stack(labels).astype(label_dtype(self.spec))
        if self.pad_last and len(images) < self.batch_size:
            missing = self.batch_size - len(images)
            images = np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.full((missing, *labels.shape[1:]), self.spec.ignore_label,
                                                     labels.dtype)])
        if self.output_names and len(self.output_names) > 1:  # a one-output model's targets are a tensor
            return images, {name: labels for name in self.output_names}
        return images, labels

    def on_epoch_begin(self):
        self._in_epoch = True

    def on_epoch_end(self):
        # `fit` and `evaluate` also call this once before their first epoch
        # (`EpochIterator.reset`); only an end that follows a begin advances the epoch.
        if self._in_epoch:
            self.epoch += 1
        self._in_epoch = False


class SyncEpoch(keras.callbacks.Callback):
    """Sets `dataset.epoch` to `fit`'s epoch number when each epoch begins.

    Use it with `fit(..., initial_epoch=e, shuffle=False)`: the batches then depend on
    the epoch number alone, whatever Keras does between epochs (the JAX trainer peeks
    one batch inside an extra epoch begin/end before training).
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = epoch


def make_dataset(name, split, *, data_dir=None, batch_size=8, training=False, seed=0,
                 limit=None, crop=None, scale=1, output_names=None, workers=1, augment="paper",
                 pad_last=False, **builtin_kwargs):
    """A `SegmentationDataset` of `split` of dataset `name` (see `datasets.load_split`).

    `crop` (h, w) overrides the training crop; `scale` divides the image size first
    (e.g. CamVid scale=2: 180x240 images, 176x240 training crops); `augment` is the
    training recipe (`augment.RECIPES`).
    """
    data = load_split(name, split, data_dir=data_dir, limit=limit, **builtin_kwargs)
    augmentation = Augmentation(data.spec, training, crop=crop, scale=scale, recipe=augment)
    return SegmentationDataset(data, augmentation, batch_size=batch_size, training=training,
                               seed=seed, output_names=output_names, workers=workers, pad_last=pad_last)
