"""Build small kernels for each target, run them in each kind of session, compare with NumPy/PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from device_kernels import ATOL, RTOL, KernelCase, build_matmul_case, build_tiny_relax_model

from devices.errors import DeviceError, UnknownTargetError
from devices.sessions import Session, open_session
from devices.targets import tvm_target
from devices.timing import Timing

#: session name -> fixture providing it.
SESSION_FIXTURES = {
    "local-x86": "local_session",
    "rpc-x86": "loopback_rpc_session",
    "tracker-x86": "loopback_tracker_session",
    "emulator-arm64": "arm64_emulator_session",
    "emulator-armv7": "armv7_emulator_session",
}


@pytest.fixture
def local_session():
    with open_session("local", "x86") as session:
        yield session


@pytest.fixture(params=sorted(SESSION_FIXTURES))
def any_session(request: pytest.FixtureRequest) -> Session:
    return request.getfixturevalue(SESSION_FIXTURES[request.param])


def _run(session: Session, case: KernelCase) -> np.ndarray:
    lib = tvm.compile(case.module, target=tvm_target(session.target))
    module = session.load(lib, name=case.name)
    args = [session.array(value) for value in (*case.inputs, case.output_buffer())]
    module[case.name](*args)
    return session.numpy(args[-1])


def test_kernel_matches_reference_in_every_session(any_session: Session, kernel_case: KernelCase):
    result = _run(any_session, kernel_case)
    np.testing.assert_allclose(result, kernel_case.expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["rpc-x86", "emulator-arm64", "emulator-armv7"])
def test_time_evaluator_through_remote_sessions(request: pytest.FixtureRequest, name: str):
    session = request.getfixturevalue(SESSION_FIXTURES[name])
    case = build_matmul_case()
    module = session.load(tvm.compile(case.module, target=tvm_target(session.target)), "timed")
    args = [session.array(value) for value in (*case.inputs, case.output_buffer())]
    timing = session.time(module, case.name, args, number=3, repeat=4)
    assert isinstance(timing, Timing)
    assert len(timing.runs) == 4
    assert timing.median_s > 0 and timing.spread_s >= 0
    assert timing.emulated == session.emulated == name.startswith("emulator")
    assert ("not a speed" in timing.describe()) == timing.emulated
    np.testing.assert_allclose(session.numpy(args[-1]), case.expected, rtol=RTOL, atol=ATOL)


def test_local_session_refuses_an_arm_target():
    with pytest.raises(DeviceError, match="cannot run in this process"):
        open_session("local", "arm64")


def test_unknown_session_kind_lists_the_known_ones():
    with pytest.raises(DeviceError, match="known kinds: local, rpc, rpc:HOST:PORT, tracker:HOST:PORT:KEY, emulator"):
        open_session("cloud", "x86")


def test_rpc_host_port_connects_to_a_running_server_and_a_malformed_one_is_named():
    from devices.loopback import start_rpc_server

    server = start_rpc_server()
    try:
        host, port = server.address
        with open_session(f"rpc:{host}:{port}", "x86") as session:
            assert session.peer == f"{host}:{port}" and session.server is None
            assert session.numpy(session.array(np.arange(3, dtype=np.float32))).tolist() == [0.0, 1.0, 2.0]
    finally:
        server.stop()
    with pytest.raises(DeviceError, match="must be rpc:HOST:PORT"):
        open_session("rpc:localhost", "x86")


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(DeviceError, match="takes the options call_timeout_s, address, .*; not adress"):
        open_session("rpc", "x86", adress=("127.0.0.1", 9090))


def test_malformed_tracker_kind():
    with pytest.raises(DeviceError, match="tracker:HOST:PORT:KEY"):
        open_session("tracker:127.0.0.1:key", "x86")


def test_unknown_target_in_open_session():
    with pytest.raises(UnknownTargetError, match="known targets: x86, arm64, armv7"):
        open_session("emulator", "riscv64")


def test_emulator_of_the_host_target_says_to_use_local():
    with pytest.raises(DeviceError, match="use 'local'"):
        open_session("emulator", "x86")


def test_kernel_error_is_one_line_and_session_stays_usable(arm64_emulator_session: Session):
    session = arm64_emulator_session
    case = build_matmul_case()
    module = session.load(tvm.compile(case.module, target=tvm_target(session.target)), "bad")
    wrong = session.array(np.zeros((3, 3), np.float32))
    with pytest.raises(DeviceError) as raised:
        module[case.name](session.array(case.inputs[0]), session.array(case.inputs[1]), wrong)
    assert "\n" not in str(raised.value) and "shape" in str(raised.value)
    assert not session.closed
    np.testing.assert_allclose(_run(session, case), case.expected, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def tiny_relax_model():
    return build_tiny_relax_model()


def test_relax_model_matches_pytorch(any_session: Session, tiny_relax_model):
    module, x, logits = tiny_relax_model
    loaded = any_session.load(tvm.compile(module, target=tvm_target(any_session.target)), "model")
    if any_session.target.emulation == "runner":
        with pytest.raises(DeviceError, match="runs TIR kernels only"):
            any_session.run_relax(loaded, [x])
        return
    (result,) = any_session.run_relax(loaded, [x])
    np.testing.assert_allclose(result, logits, rtol=RTOL, atol=ATOL)
