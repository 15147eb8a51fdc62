"""The built-in dataset: random shapes whose class is told by the colour of the image's
frame (`builtin_arrays`); `datasets.load_split("builtin", ...)` serves it. Drawn, not read:
it needs no download, and tests and the tiny preset train on it."""

import functools

import numpy as np

SPLITS = ("train", "val", "test")  # of every dataset; here, a split's index seeds its images
BUILTIN_NUM_IMAGES = {"train": 512, "val": 128, "test": 128}


def _shape_masks(kind, cy, cx, r, yy, xx, rng):
    """Masks [n, h, w] of one shape per image: 1 rectangle, 2 disk, 3 triangle."""
    dy, dx = yy - cy, xx - cx
    aspect = rng.uniform(0.5, 1.0, cy.shape).astype(np.float32)
    rectangle = (np.abs(dy) <= r * aspect) & (np.abs(dx) <= r / np.sqrt(aspect) * 0.9)
    disk = dy**2 + dx**2 <= r**2
    angle = rng.uniform(0, 2 * np.pi, cy.shape).astype(np.float32)
    corners = [(1.3 * r * np.sin(angle + k * 2 * np.pi / 3),
                1.3 * r * np.cos(angle + k * 2 * np.pi / 3)) for k in range(3)]
    triangle = np.ones_like(disk)
    for (ay, ax), (by, bx) in zip(corners, corners[1:] + corners[:1]):
        triangle &= (bx - ax) * (dy - ay) - (by - ay) * (dx - ax) >= 0
    return np.where(kind == 1, rectangle, np.where(kind == 2, disk, triangle))


def _smooth_colors(rng, n, h, w, grid=4):
    """Random colours on a `grid` x `grid` lattice, bilinearly interpolated: [n, h, w, 3]."""
    def weights(size):
        t = np.linspace(0, grid - 1, size)
        return np.maximum(0, 1 - np.abs(t[:, None] - np.arange(grid)[None])).astype(np.float32)
    lattice = rng.uniform(0, 255, (n, grid, grid, 3)).astype(np.float32)
    return np.einsum("yi,nijc,xj->nyxc", weights(h), lattice, weights(w), optimize=True)


# The colour of the frame around a built-in image; it gives the class of every shape in it.
FRAME_COLORS = np.array([(220, 30, 30), (30, 200, 30), (40, 70, 240)], np.float32)
FRAME_WIDTH = 1 / 16  # of the image's shorter side


def _draw_shapes(rng, n, h, w):
    """Images [n, h, w, 3] uint8 and labels [n, h, w] uint8 (see `builtin_arrays`)."""
    scale = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / scale
    rows, columns = np.mgrid[0:h, 0:w] // max(2, scale // 32) % 2
    checkerboard = (rows ^ columns).astype(bool)
    images = _smooth_colors(rng, n, h, w)
    frame_class = rng.integers(1, 4, (n, 1, 1))
    labels = np.zeros((n, h, w), np.uint8)
    for slot in range(3):
        present = rng.random((n, 1, 1)) < (1.0 if slot == 0 else 0.7)
        kind = rng.integers(1, 4, (n, 1, 1))
        cy = rng.uniform(0.3, 0.7, (n, 1, 1)).astype(np.float32) * h / scale
        cx = rng.uniform(0.3, 0.7, (n, 1, 1)).astype(np.float32) * w / scale
        r = rng.uniform(0.1, 0.2, (n, 1, 1)).astype(np.float32)
        mask = _shape_masks(kind, cy, cx, r, yy, xx, rng) & present
        color = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
        color = np.where(checkerboard[..., None], (color + 128) % 256, color)
        images = np.where(mask[..., None], color, images)
        labels = np.where(mask, frame_class, labels).astype(np.uint8)
    margin = max(1, round(FRAME_WIDTH * scale))
    frame = np.ones((h, w), bool)
    frame[margin:h - margin, margin:w - margin] = False
    images = np.where(frame[None, ..., None], FRAME_COLORS[frame_class[:, 0, 0] - 1][:, None, None], images)
    labels[:, frame] = 0
    images += rng.normal(0, 12, images.shape).astype(np.float32)
    padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode="edge")
    border = np.zeros_like(labels, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        border |= padded[:, dy:dy + h, dx:dx + w] != labels
    labels[border & (labels > 0)] = 255
    return np.clip(images, 0, 255).astype(np.uint8), labels


@functools.lru_cache(maxsize=8)
def builtin_arrays(split, size, num_images, seed, chunk=64):
    """Images [n, h, w, 3] uint8 and labels [n, h, w] uint8 of random shapes.

    Up to three shapes per image (rectangles, disks, triangles, overlapping), centred in
    the middle 40% of the image, in random colours with a checkerboard texture, on a
    smooth random background plus pixel noise. A frame along the image's edge (1/16 of its
    shorter side) is red, green or blue, and a shape's class is the colour of its image's
    frame (1, 2, 3; frame and background are 0): told from context, not from the shape.
    With the tiny preset at 64x64, a pixel of output 1 reads a 39x39 window of the image
    (the data block and one iteration), so output 1 finds the shapes but for most of their
    pixels sees the frame at the window's rim only, or not at all; the window of output 2
    (111x111) holds the whole image (`tests/test_datasets.py` measures both). The one-pixel
    inner border of each shape is ignored (255). Drawn `chunk` images at a time, each
    chunk from its own seed.
    """
    h, w = size
    parts = [_draw_shapes(np.random.default_rng((seed, SPLITS.index(split), h, w, start)),
                          min(chunk, num_images - start), h, w)
             for start in range(0, num_images, chunk)]
    images, labels = (np.concatenate(arrays) for arrays in zip(*parts))
    images.flags.writeable = labels.flags.writeable = False  # shared by the cache
    return images, labels
