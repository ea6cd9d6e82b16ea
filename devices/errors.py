"""Errors raised by ``devices``: one-line messages a user can act on."""


class DeviceError(RuntimeError):
    """Base class of every error raised by ``devices``; its message is one line."""


class UnknownTargetError(DeviceError, ValueError):
    """A target name that is not in the table of targets."""


class ToolchainMissingError(DeviceError):
    """A cross-compiler, qemu or a runtime library needed for a target is not installed."""


class SessionClosedError(DeviceError):
    """A remote call on a session whose server or emulator is gone (killed, crashed or timed out)."""


class RemoteTimeoutError(SessionClosedError):
    """A remote call that did not answer within its timeout; the session was aborted."""
