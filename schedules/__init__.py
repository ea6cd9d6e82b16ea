"""Compact sparse formats, sparse TIR kernels, their tuner and tuning database.

Public API (other rooms use these names):

- :func:`schedules.formats.pack` ``(scheme, weight, mask, capacity=None) -> SparseFormat`` with
  ``to_dense()``, ``to_mask()``, ``nbytes``, ``scheme``, ``weight_shape``, ``nnz``, ``capacity``,
  ``values``, ``buffers(direction)``, ``valid_slots()``, ``dense_index()``, ``gather(weight)``,
  ``with_values(values)`` and ``repack(weight)`` (new values, same mask, no index copy);
  :func:`schedules.formats.transfer` ``(slots, source, target)`` moves momentum (or any per-slot
  tensor) across a mutation by position.
- :func:`schedules.kernels.forward_primfunc` ``(fmt, x_shape, stride, knobs=None)`` -> PrimFunc
  ``(x, *fmt.buffers("forward"), y)``; :func:`schedules.kernels.grad_input_primfunc` ->
  ``(dy, *fmt.buffers("grad_input"), dx)``; :func:`schedules.kernels.grad_weight_primfunc` ->
  ``(x, dy, *fmt.buffers("grad_weight"), dvalues)``. All scheduled (``tir.is_scheduled``), indices
  as runtime buffers. Channel has no TVM kernel (PyTorch's dense conv on the compacted weight).
- :class:`schedules.cache.KernelCache` ``.get(fmt, direction, x_shape, stride, knobs=None)`` -> a
  built :class:`schedules.cache.Kernel`, tuning database first; :func:`schedules.cache.default_cache`.
- :class:`schedules.layer.SparseConv2d` ``(weight, mask, scheme, stride=1, capacity=None,
  cache=None)``: parameter ``values``; ``repack(weight, mask, capacity=None)`` at a mutation.
- :class:`schedules.database.TuningDatabase` ``(path=None)`` (JSON file), ``Workload``, ``Record``.
- :func:`schedules.tune.tune_kernel` and ``python -m schedules.tune --model resnet32 --scheme S
  --density D --target x86 --trials N --db PATH [--session local|rpc|tracker:H:P:K] [--retune]``
  (``python -m benchmarks.kernels`` times the kernels against PyTorch).
- :func:`schedules.masks.random_mask` (scheme-valid random masks), :mod:`schedules.workloads`
  (the ResNet layer shapes).
- Errors: :class:`schedules.errors.SparseFormatError` (a ``ValueError``),
  :class:`schedules.errors.TuningDatabaseError`, :class:`schedules.errors.UnsupportedKernelError`.
- :func:`schedules.threads.configure_threads` (``OMP_WAIT_POLICY=PASSIVE`` so TVM's and PyTorch's
  thread pools do not fight; called here, on import, because OpenMP reads it when torch loads).

Nothing here imports ``mest`` or ``tvm_passes``; targets and timing sessions come from ``devices``.
"""

from schedules.threads import configure_threads

configure_threads()
