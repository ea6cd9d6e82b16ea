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

The training pipeline (:mod:`~tvm_passes.training_pipeline`, a whole training step in one built
function) in phase order: the importer in train mode; :mod:`~tvm_passes.train_batch_norm`
(``TrainBatchNorm``: running statistics in and out, float64 statistics);
:mod:`~tvm_passes.channel_training` (``ChannelTraining``); :mod:`~tvm_passes.append_loss`
(``AppendCrossEntropy``); :mod:`~tvm_passes.relu_subgradient` (``ReluSubgradient``); Relax's
``Gradient``; :mod:`~tvm_passes.lower_sparse_training` (``LowerSparseTraining``: the sparse layers'
three convs as kernels); :mod:`~tvm_passes.append_sgd` (``AppendSGD``); the dense schedules above with
:mod:`~tvm_passes.schedule_channel_reduction` and :mod:`~tvm_passes.schedule_elementwise`. Its calling
convention is :mod:`~tvm_passes.step_signature`; built steps are cached by
:mod:`~tvm_passes.training_cache`.

The annotation contract shared by the passes is in :mod:`~tvm_passes.sparse_conv`; the per-layer
report in :mod:`~tvm_passes.report`. The benchmarks are ``python -m benchmarks.inference``,
``python -m benchmarks.crossover`` and, op by op for the dense ops of a training step,
``python -m benchmarks.dense_ops``.
"""
