"""What the commands of every room share: argparse with one-line errors and each flag's default in its help.

The bottom room holds it so that every room's command can use it (``python -m devices.serve``,
``python -m schedules.tune``, ...).
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines end with ``(default: X)``, unless they say their default themselves or have none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or action.required or default is None or default is False or default == "" \
                or default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose complaints are one ``error: ...`` line with exit code 2 (no usage
    block), and whose help shows every flag's default (:class:`DefaultsHelpFormatter`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")
