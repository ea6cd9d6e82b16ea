"""Custom TVM Relax passes lowering masked layers to the sparse kernels of ``schedules``."""
