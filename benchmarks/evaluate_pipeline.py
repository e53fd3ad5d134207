"""Evaluation input pipeline: images/s of dpn-evaluate's loader against PIL + torch DataLoader.

    python -m benchmarks.evaluate_pipeline [--images 256] [--workers 2] [--batch 32]
                                           [--size 224] [--repeats 3]

Both decode JPEGs of ImageNet's typical size (500x375) from a folder, short-side resize,
center crop and normalize to float32 NCHW batches, with the same number of worker processes:

- ``ours authors``   :func:`dpn_gluon.data.datasets.iter_batches`, the authors' protocol
  (OpenCV's bicubic via cv2, or the numpy kernel when cv2 is absent);
- ``ours authors numpy``  the same with the numpy kernel (cv2 hidden);
- ``ours timm``      the same loader, timm's protocol (PIL bicubic);
- ``torch DataLoader``  a ``torch.utils.data.Dataset`` that does what timm's eval transforms
  do (PIL open, ``convert('RGB')``, PIL bicubic resize, center crop, normalize) in a
  ``DataLoader`` with the same workers and batch size (torchvision is not installable here,
  so its two transforms are written out with PIL and numpy).

No model runs: this is the data side of evaluation, which bounds throughput once the network
is on a GPU. Each configuration runs ``--repeats`` times over the whole folder (after one
warm-up pass, so the page cache holds the files); the median images/s is reported with its
range. Run by hand; never a test assertion.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import summarize


def write_images(folder: Path, n: int, seed: int = 0):
    """``n`` JPEGs of 500x375 or 375x500 (both orientations), quality 90, in one class folder."""
    rng = np.random.RandomState(seed)
    cls = folder / "n00000000"
    cls.mkdir(parents=True)
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)
        small = rng.randint(0, 256, (h // 25, w // 25, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 8, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
        img.save(cls / ("%05d.jpg" % i), "JPEG", quality=90)
    return folder


def run_ours(folder, size, protocol, workers, batch, numpy_kernel=False):
    from dpn_gluon.data import preprocess
    from dpn_gluon.data.datasets import iter_batches, open_dataset
    ds = open_dataset(folder)
    if numpy_kernel:
        preprocess._cv2.cache_clear()
        saved, sys.modules["cv2"] = sys.modules.get("cv2"), None
    try:
        start = time.perf_counter()
        n = sum(len(b.labels) for b in iter_batches(ds, size, protocol, batch, workers))
        return n / (time.perf_counter() - start)
    finally:
        if numpy_kernel:
            if saved is None:
                sys.modules.pop("cv2", None)
            else:
                sys.modules["cv2"] = saved
            preprocess._cv2.cache_clear()


class TimmEval:
    """timm's eval transforms for the dpn*.mx_in1k weights, as a torch Dataset."""

    MEAN = np.array([124, 117, 104], np.float32)

    def __init__(self, files, size):
        self.files, self.size = files, size
        self.short = int(size / 0.875)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
        w, h = img.size
        nw, nh = (self.short, self.short * h // w) if w <= h else (self.short * w // h, self.short)
        img = img.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
        x = np.asarray(img.crop((left, top, left + self.size, top + self.size)), np.float32)
        x = (x - self.MEAN) * np.float32(0.0167)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), 0


def run_torch(folder, size, workers, batch):
    import torch
    files = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    loader = torch.utils.data.DataLoader(TimmEval(files, size), batch_size=batch,
                                         num_workers=workers, shuffle=False)
    start = time.perf_counter()
    n = sum(len(x) for x, _ in loader)
    return n / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    configs = [
        ("ours authors", lambda f: run_ours(f, a.size, "authors", a.workers, a.batch)),
        ("ours authors numpy", lambda f: run_ours(f, a.size, "authors", a.workers, a.batch, True)),
        ("ours timm", lambda f: run_ours(f, a.size, "timm", a.workers, a.batch)),
        ("torch DataLoader (timm)", lambda f: run_torch(f, a.size, a.workers, a.batch)),
    ]
    with tempfile.TemporaryDirectory(prefix="dpn-pipeline-") as tmp:
        folder = write_images(Path(tmp), a.images)
        samples = {name: [] for name, _ in configs}
        for name, run in configs:      # warm-up: page cache, imports
            run(folder)
        for _ in range(a.repeats):     # interleaved rounds: background load hits all alike
            for name, run in configs:
                samples[name].append(run(folder))
    try:
        import cv2
        cv = cv2.__version__
    except ImportError:
        cv = "absent"
    print("%d JPEGs 500x375, crop %d, batch %d, %d workers; %d CPUs, Python %s, torch %s, "
          "Pillow %s, OpenCV %s" % (a.images, a.size, a.batch, a.workers, os.cpu_count(),
                                     platform.python_version(), torch.__version__,
                                     Image.__version__, cv))
    print()
    print("| pipeline | images/s (median [min-max] of %d) |" % a.repeats)
    print("| --- | --- |")
    for name, _ in configs:
        s = summarize(samples[name])
        print("| %s | %.0f [%.0f-%.0f] |" % (name, s["median"], s["min"], s["max"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
