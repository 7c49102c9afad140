"""Prototype of two CPU changes to `normdrop.train.train`, for benchmarks/bench_train.py --prototype.

`train_prototype` is src/normdrop/train.py's own `train` with exactly these edits, applied to its
source text at import (so it follows src/ as it changes; an edit that no longer applies raises):

1. channels_last on CPU too for the convolutional models (train() uses it on CUDA only): oneDNN's
   convolutions, max-pooling and BatchNorm run faster in NHWC on CPU;
2. on CPU, every nn.Dropout of the model is swapped for benchmarks/fast_dropout.py's FastDropout
   (one 64-bit draw per four elements instead of one float Bernoulli draw per element).

Nothing in src/ is changed.
"""

from __future__ import annotations

import inspect
import textwrap

from fast_dropout import replace_dropout

import normdrop.train as _train_module

EDITS = [
    (
        'memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format',
        'memory_format = torch.channels_last if device.type == "cuda" or cfg.model != "mlp" '
        "else torch.contiguous_format  # PROTOTYPE 1",
    ),
    (
        "    model = model.to(device, memory_format=memory_format)\n",
        "    if device.type == 'cpu':  # PROTOTYPE 2\n"
        "        replace_dropout(model)\n"
        "    model = model.to(device, memory_format=memory_format)\n",
    ),
]


def _build():
    src = textwrap.dedent(inspect.getsource(_train_module.train))
    for old, new in EDITS:
        if src.count(old) != 1:
            raise RuntimeError(f"prototype edit no longer applies to normdrop.train.train: {old!r}")
        src = src.replace(old, new)
    src = src.replace("def train(", "def train_prototype(", 1)
    namespace = dict(vars(_train_module))
    namespace["replace_dropout"] = replace_dropout
    exec(compile(src, "<normdrop.train.train + prototype edits>", "exec"), namespace)
    return namespace["train_prototype"]


train_prototype = _build()
