"""Benchmark commands: every speed and memory figure measured as a user would see it.

Each variant (dense PyTorch, PyTorch ``channels_last``, the reference's masked training, our ``tvm``
backend, ...) runs in a process of its own, started with the environment the user started the
command with, and the variants alternate round by round. :mod:`benchmarks.harness` holds the one
protocol; the commands are

- ``python -m benchmarks.train_step``: a whole MEST training step (forward, backward, SGD);
- ``python -m benchmarks.kernels``: one sparse layer's kernels against PyTorch's conv, per direction;
- ``python -m benchmarks.dense_ops``: the dense ops of a training step (stem, shortcuts, classifier,
  pool; forward and both gradients) against PyTorch, op by op;
- ``python -m benchmarks.inference``: a compiled sparse model against TVM dense and PyTorch eval;
- ``python -m benchmarks.crossover``: one conv, sparse over densities against dense (where sparse
  stops winning: the numbers of :data:`tvm_passes.config.DENSE_CROSSOVER`).

This package may import every room; no room imports it. Importing it imports nothing of ours.
"""
