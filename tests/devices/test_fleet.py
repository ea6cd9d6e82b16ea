"""A fleet: every free device of a tracker key at once, work spread over them, a killed one left out."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from devices.errors import DeviceError
from devices.fleet import Fleet
from devices.loopback import ServiceProcess, start_rpc_server, start_tracker
from devices.sessions import Session, open_fleet

KEY = "fleet"


@pytest.fixture
def tracker_with_two_servers() -> Iterator[tuple[ServiceProcess, dict[str, ServiceProcess]]]:
    """A tracker on 127.0.0.1 and two RPC servers of this machine registered under :data:`KEY`."""
    with start_tracker() as tracker:
        servers = [start_rpc_server(tracker=tracker.address, key=KEY) for _ in range(2)]
        try:
            yield tracker, {f"{s.host}:{s.port}": s for s in servers}
        finally:
            for server in servers:
                server.stop()


def test_a_fleet_spreads_its_work_and_goes_on_when_a_device_is_killed(tracker_with_two_servers):
    tracker, servers = tracker_with_two_servers
    lines: list[str] = []
    with open_fleet(f"tracker:{tracker.host}:{tracker.port}:{KEY}", "x86") as fleet:
        fleet.warn = lines.append
        assert sorted(s.device_address for s in fleet.sessions) == sorted(servers)
        victim = fleet.sessions[0]
        started = threading.Barrier(2, timeout=60)
        calls: dict[int, int] = {}

        def work(session: Session, item: int) -> int:
            calls[id(session)] = calls.get(id(session), 0) + 1
            if calls[id(session)] == 1:
                started.wait()  # both devices take an item before either takes a second
            elif session is victim and calls[id(session)] == 2:
                servers[victim.device_address].kill()  # killed as it starts its second item
            return int(session.numpy(session.array(np.arange(item + 1))).sum())

        results = fleet.map(work, list(range(12)))
        assert results == [n * (n + 1) // 2 for n in range(12)]
        assert fleet.alive == [fleet.sessions[1]]
        report = list(fleet.report("copies"))
        assert report[0].endswith(": 1 copies (lost)") and victim.device_address in report[0], report
        assert report[1].endswith(": 11 copies"), report
        assert len(lines) == 1 and "lost" in lines[0] and "1 device go on" in lines[0], lines
        servers[fleet.sessions[1].device_address].kill()
        with pytest.raises(DeviceError, match="every device of the fleet was lost"):
            fleet.map(work, [7, 8])


def test_a_fleet_of_one_session_is_that_session(loopback_rpc_session):
    fleet = Fleet.of(loopback_rpc_session)
    assert fleet.sessions == [loopback_rpc_session] and Fleet.of(fleet) is fleet
    assert fleet.map(lambda session, n: n * 2, [1, 2, 3]) == [2, 4, 6]

    def fails(session: Session, n: int) -> int:
        raise ValueError(f"item {n} is bad")

    with pytest.raises(ValueError, match="item 1 is bad"):  # not a lost device: raised as it is
        fleet.map(fails, [1])
    assert fleet.alive == [loopback_rpc_session]
