"""Peak resident memory of a training run, numbacnn against PyTorch, each in a fresh process.

    python bench/memory.py --batches 100

Both load MNIST the same way (numbacnn.data), build keras-convnet, and train --batches steps of batch 128
with Adam; the figure is the process's peak resident set size (ru_maxrss), data set included.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

NUMBACNN = """
import numpy as np
from numbacnn.data import load_dataset
from numbacnn.train import prepare_images
from numbacnn.model import Sequential
from numbacnn.optim import Adam
from numbacnn.presets import preset_spec
from numbacnn.train import fit
x, y = load_dataset("mnist", "train")
x, y = prepare_images(x), y.astype("int64")
n = {batches} * 128
fit(Sequential(preset_spec("keras-convnet")).build(seed=0), Adam(), x[:n], y[:n], epochs=1, batch_size=128)
"""

TORCH = """
import numpy as np, torch
from numbacnn.data import load_dataset
from numbacnn.train import prepare_images
from numbacnn.bench import torch_twin
from numbacnn.model import Sequential
from numbacnn.presets import preset_spec
x, y = load_dataset("mnist", "train")
x, y = prepare_images(x), y.astype("int64")
xt, yt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y)
net = torch_twin(Sequential(preset_spec("keras-convnet")).build(seed=0), torch)
opt, loss_fn = torch.optim.Adam(net.parameters()), torch.nn.CrossEntropyLoss()
for b in range({batches}):
    opt.zero_grad(); loss_fn(net(xt[b * 128:(b + 1) * 128]), yt[b * 128:(b + 1) * 128]).backward(); opt.step()
"""


def peak_mib(code: str) -> float:
    """The peak RSS of a child process running ``code``, in MiB."""
    child = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"child failed with status {status}")
    return usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    ours, theirs = peak_mib(NUMBACNN.format(batches=args.batches)), peak_mib(TORCH.format(batches=args.batches))
    print(f"peak resident memory, {args.batches} training steps of keras-convnet at batch 128: "
          f"numbacnn {ours:,.0f} MiB, PyTorch {theirs:,.0f} MiB, ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
