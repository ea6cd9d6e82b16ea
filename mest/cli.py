"""What the ``mest`` commands share: one-line errors with exit code 2 instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that carry a message for the user, from every room that is importable."""
    from mest.errors import MestError

    errors: list[type[BaseException]] = [MestError]
    for module, names in (("schedules.errors", ("SparseFormatError", "TuningDatabaseError", "UnsupportedKernelError")),
                          ("tvm_passes.errors", ("CompileError",)),
                          ("devices.errors", ("DeviceError",))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        errors.extend(getattr(imported, n) for n in names if hasattr(imported, n))
    return tuple(errors)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
             interrupted: str = "interrupted; the last checkpoint is intact") -> int:
    """Run ``main``; a user error prints ``error: <message>`` on one line and returns 2.

    ``interrupted`` is what Ctrl-C prints (exit code 130).
    """
    try:
        return main(argv)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
