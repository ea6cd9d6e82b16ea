"""Custom TVM Relax passes lowering masked layers to the sparse kernels of ``schedules``.

One pass per module, in pipeline order (:mod:`tvm_passes.pipeline` runs them):

- :mod:`~tvm_passes.importer`: PyTorch -> Relax, parameter inputs mapped to FQNs (phase 1);
- :mod:`~tvm_passes.annotate`: ``AnnotateSparsity``, masked convs marked by FQN (phase 2);
- :mod:`~tvm_passes.fold_batch_norm`: ``FoldBatchNorm`` (phase 3);
- :mod:`~tvm_passes.keep_dense`: ``KeepDense``, per-target crossover table of :mod:`~tvm_passes.config` (phase 4);
- :mod:`~tvm_passes.channel_compaction`: ``ChannelCompaction`` (phase 4);
- :mod:`~tvm_passes.lower_sparse_conv`: ``LowerSparseConv`` with kernels from :mod:`~tvm_passes.kernels` (phase 4);
- :mod:`~tvm_passes.tuning`: the tuning database directory (phase 6);
- :mod:`~tvm_passes.schedule_dense_conv`: ``ScheduleDenseConv``, the default schedule of the dense
  convs the tuning database lacks (phase 6).

For a compiled training step (forward, ``Gradient``, optimizer), the dense convs, their gradients and
the classifier: :mod:`~tvm_passes.legalize_dense_conv` (``LegalizeDenseConv``, before ``LegalizeOps``)
and :mod:`~tvm_passes.schedule_dense_ops` (``ScheduleDenseOps``: ``ScheduleDenseConv``,
:mod:`~tvm_passes.schedule_dense_matmul`'s ``ScheduleDenseMatmul``,
:mod:`~tvm_passes.schedule_global_pool`'s ``ScheduleGlobalPool`` and dlight's CPU reductions, after
``FuseTIR``); their computations are in :mod:`~tvm_passes.dense_conv_te`, their shared tiling in
:mod:`~tvm_passes.dense_schedule`.

The annotation contract shared by the passes is in :mod:`~tvm_passes.sparse_conv`; the per-layer
report in :mod:`~tvm_passes.report`. The benchmarks are ``python -m benchmarks.inference``,
``python -m benchmarks.crossover`` and, op by op for the dense ops of a training step,
``python -m benchmarks.dense_ops``.
"""
