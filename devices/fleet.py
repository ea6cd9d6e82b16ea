"""A fleet: several sessions working at once, e.g. every free device of a tracker key.

:meth:`Fleet.map` spreads work items over the live sessions, each session in a thread of its own
taking the next item as it finishes one. A device lost during an item (killed, crashed, or silent
past its timeout: :class:`~devices.errors.SessionClosedError`) leaves the fleet with a warning and
its item goes to another; any other error stops the map and is raised. The items each session
finished are counted (:meth:`Fleet.report`). :func:`devices.sessions.open_fleet` opens one.

Devices of one tracker key are meant to be alike (one kind of board), so that times measured on
different ones compare; on one machine (loopback servers) they share its cores and disturb each other.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import DeviceError, SessionClosedError
from .session_base import Session

Item = TypeVar("Item")
Result = TypeVar("Result")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Fleet:
    """Sessions that work at once; use as a context manager (closes them all).

    Parameters
    ----------
    sessions : list of Session
        At least one.
    warn : callable, optional
        Receives the one-line message of a lost device (default: a ``warning:`` line on stderr).
    """

    def __init__(self, sessions: list[Session], warn: Callable[[str], None] = _warn) -> None:
        if not sessions:
            raise DeviceError("a fleet needs at least one session")
        self.sessions = list(sessions)
        self.warn = warn
        self._done = {id(s): 0 for s in self.sessions}
        self._lost: dict[int, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, devices: "Fleet | Session") -> "Fleet":
        """``devices`` itself if it is a fleet, else a fleet of that one session."""
        return devices if isinstance(devices, Fleet) else cls([devices])

    @property
    def target(self) -> Any:
        """The target of the fleet's devices (they share it)."""
        return self.sessions[0].target

    @property
    def emulated(self) -> bool:
        """Whether its timings are correctness runs only (qemu)."""
        return self.sessions[0].emulated

    @property
    def alive(self) -> list[Session]:
        """The sessions not lost."""
        return [s for s in self.sessions if id(s) not in self._lost]

    def map(self, work: Callable[[Session, Item], Result], items: list[Item]) -> list[Result]:
        """``[work(session, item) for item in items]``, the items spread over the live sessions.

        Raises
        ------
        DeviceError
            When every device is lost before the items are done (naming the last loss).
        Exception
            The first error of ``work`` that is not a lost device.
        """
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for index, item in enumerate(items):
            pending.put((index, item))
        results: dict[int, Result] = {}
        failures: list[BaseException] = []
        while len(results) < len(items) and not failures:
            workers = [threading.Thread(target=self._drain, args=(s, work, pending, results, failures),
                                        name=f"fleet: {s.describe()}", daemon=True) for s in self.alive]
            if not workers:
                raise DeviceError(f"every device of the fleet was lost ({' | '.join(self._lost.values())})")
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        if failures:
            raise failures[0]
        return [results[i] for i in range(len(items))]

    def run(self, work: Callable[[Session], Result]) -> Result:
        """``work(session)`` on one live session, again on another if that device is lost meanwhile."""
        return self.map(lambda session, _: work(session), [None])[0]

    def _drain(self, session: Session, work: Callable[[Session, Item], Result], pending: queue.SimpleQueue,
               results: dict[int, Result], failures: list[BaseException]) -> None:
        while not failures:
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                result = work(session, item)
            except SessionClosedError as err:
                pending.put((index, item))
                self._lose(session, str(err))
                return
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                failures.append(err)
                return
            with self._lock:
                results[index] = result
                self._done[id(session)] += 1

    def _lose(self, session: Session, reason: str) -> None:
        with self._lock:
            self._lost[id(session)] = reason
        left = len(self.alive)
        self.warn(f"{session.describe()} lost ({reason[:200]}); {left} device{'s' if left != 1 else ''} "
                  "go on with its work")

    def report(self, unit: str = "items") -> Iterator[str]:
        """One line per session: what it is, how many items (``unit``) it finished, whether it was lost."""
        for session in self.sessions:
            lost = " (lost)" if id(session) in self._lost else ""
            yield f"{session.describe()}: {self._done[id(session)]} {unit}{lost}"

    def close(self) -> None:
        """Close every session."""
        for session in self.sessions:
            session.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
