"""Targets, cross-compilers and TVM sessions (local, loopback RPC, tracker, emulator).

Modules (import them directly; this package imports nothing, so ``devices.errors`` is cheap):

- ``targets``: the one table of targets (``get_target``, ``tvm_target``, ``export_library``).
- ``sessions``: ``open_session(kind, target)`` and the :class:`~devices.sessions.Session` API.
- ``timing``: :class:`~devices.timing.Timing` (median and spread; emulated runs are marked) and
  :func:`~devices.timing.time_calls` (time a callable in this process).
- ``errors``: :class:`~devices.errors.DeviceError` and its one-line subclasses.
- ``serve``: ``python -m devices.serve``, this machine as an RPC device (or a tracker).
- ``loopback``: RPC servers and trackers as child processes on 127.0.0.1.
- ``remote``, ``kernel_runner``, ``arm64_runtime``, ``native_build``, ``cache``: the machinery.

See ``devices/README.md``.
"""
