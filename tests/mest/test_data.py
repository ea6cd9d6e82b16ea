"""The CIFAR reader: the real python-pickle format loads; a batch is read as data only (a crafted one
naming a module is refused and the module never imported); a batch that does not fit is refused
before training; random bytes raise only DataError."""

from __future__ import annotations

import pickle
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import assert_one_error_line, run_python, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

from mest.cli import run_main
from mest.data import load_dataset, read_cifar_batch
from mest.errors import DataError
from mest.train import main

LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batch(n: int, seed: int, label_key: bytes = b"labels", classes: int = 10) -> dict:
    """A batch as the CIFAR python files hold it: uint8 [n, 3072] rows (1024 red, 1024 green, 1024 blue)."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": f"batch {seed}".encode(), label_key: rng.integers(0, classes, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = (np.asarray(batch[label_key]) // 5).tolist()
    return batch


def write_batch(path: Path, batch: object) -> None:
    path.write_bytes(pickle.dumps(batch, protocol=2))  # the protocol of the original files


def write_cifar10(root: Path, per_batch: int = 8, test: int = 6) -> Path:
    """A CIFAR-10 folder in the real format: five data batches, a test batch and batches.meta."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_batch(root / f"data_batch_{i}", cifar_batch(per_batch, seed=i))
    write_batch(root / "test_batch", cifar_batch(test, seed=0))
    write_batch(root / "batches.meta", {b"label_names": LABEL_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return root


@pytest.fixture
def cifar10(tmp_path) -> Path:
    return write_cifar10(tmp_path / "cifar-10-batches-py")


def test_cifar10_batches_load_channel_major_with_their_labels(cifar10):
    data = load_dataset("cifar10", cifar10)
    batches = [pickle.loads((cifar10 / f"data_batch_{i}").read_bytes(), encoding="bytes") for i in range(1, 6)]
    raw = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.float32) / 255
    mean, std = raw.mean(axis=(0, 2, 3), keepdims=True), raw.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    assert data.train.images.shape == (40, 3, 32, 32) and data.test.images.shape == (6, 3, 32, 32)
    assert torch.allclose(data.train.images, torch.from_numpy((raw - mean) / std), atol=1e-5)
    assert data.train.labels.tolist() == sum((b[b"labels"] for b in batches), [])
    assert data.num_classes == 10 and data.in_channels == 3 and data.image_size == 32


def test_cifar100_train_and_test_files_load(tmp_path):
    write_batch(tmp_path / "train", cifar_batch(12, seed=1, label_key=b"fine_labels", classes=100))
    write_batch(tmp_path / "test", cifar_batch(4, seed=2, label_key=b"fine_labels", classes=100))
    write_batch(tmp_path / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)]})
    data = load_dataset("cifar100", tmp_path)
    assert len(data.train) == 12 and len(data.test) == 4 and data.num_classes == 100


def test_mest_train_trains_on_cifar_batches(cifar10, tmp_path, capsys):
    code = run_main(main, ["--model", "tiny", "--dataset", "cifar10", "--data-dir", str(cifar10), "--epochs", "1",
                           "--batch-size", "8", "--backend", "torch-mask", "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# -- a crafted batch ------------------------------------------------------------------------
@pytest.fixture
def payload_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A module on sys.path that creates a marker file when it is imported (and is not imported yet)."""
    name = f"mest_test_payload_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported.marker"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(*args):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


def crafted_batch(module: str) -> bytes:
    """A batch dict whose images are ``module.run()``, pickled the way an attacker would (protocol 2)."""
    fake = types.ModuleType(module)  # a stand-in, so that pickling never imports the real module

    def run(*args):
        return 0

    run.__module__, run.__qualname__ = module, "run"
    fake.run = run

    class Payload:
        def __reduce__(self):
            return run, ()

    sys.modules[module] = fake
    try:
        return pickle.dumps({b"data": Payload(), b"labels": [0]}, protocol=2)
    finally:
        del sys.modules[module]


def test_a_batch_naming_a_module_is_refused_and_the_module_never_imported(cifar10, payload_module):
    module, marker = payload_module
    crafted = crafted_batch(module)
    (cifar10 / "data_batch_3").write_bytes(crafted)
    with pytest.raises(DataError, match=f"data_batch_3 .*refers to {module}.run, which no CIFAR batch holds") as err:
        load_dataset("cifar10", cifar10)
    assert "\n" not in str(err.value)
    assert not marker.exists() and module not in sys.modules
    pickle.loads(crafted)  # the full unpickler would have imported it: the file really is a payload
    assert marker.exists()
    del sys.modules[module]


@pytest.mark.parametrize("pickled, name", [
    (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.", "os.system"),  # GLOBAL
    (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R.", "builtins.eval"),  # STACK_GLOBAL
    (b"(S'1'\nibuiltins\nint\n.", "builtins.int"),  # INST
    (b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.", "numpy.load"),  # numpy, but not an array constructor
])
def test_every_global_outside_the_array_constructors_is_refused(tmp_path, pickled, name):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickled)
    with pytest.raises(DataError, match=f"refers to {name}, which no CIFAR batch holds"):
        read_cifar_batch(path)


@pytest.mark.parametrize("pickled, message", [
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", "_codecs.encode with 'rot13'"),
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.", "takes 0 positional arguments"),  # bytes(2**30)
])
def test_the_allowed_helpers_do_only_what_protocol_2_needs(tmp_path, pickled, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickled)
    with pytest.raises(DataError, match=message):
        read_cifar_batch(path)


def test_mest_train_refuses_a_crafted_batch_in_one_line_and_touches_nothing(cifar10, payload_module, tmp_path):
    module, marker = payload_module
    (cifar10 / "data_batch_1").write_bytes(crafted_batch(module))
    before = snapshot(tmp_path)
    result = run_python("-m", "mest.train", "--model", "tiny", "--dataset", "cifar10", "--data-dir", str(cifar10),
                        "--backend", "torch-mask", "--out", str(tmp_path / "run"),
                        env_extra={"PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}"})
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"refers to {module}.run, which no CIFAR batch holds (refused, not imported)")
    assert not marker.exists()
    assert snapshot(tmp_path) == before  # no run directory either


# -- batches that do not fit ------------------------------------------------------------------
def _with(**changes) -> dict:
    batch = cifar_batch(8, seed=1)
    batch.update({k.encode(): v for k, v in changes.items()})
    return batch


@pytest.mark.parametrize("batch, message", [
    ([1, 2, 3], "holds a list, not a batch dict"),
    ({b"labels": [0]}, "has no 'data' entry"),
    ({b"data": np.zeros((1, 3072), np.uint8)}, "has no 'labels' entry"),
    (_with(data=np.zeros((8, 3072), np.float32)), "images are float32 [8, 3072], CIFAR batches hold uint8 [N, 3072]"),
    (_with(data=np.zeros((8, 3071), np.uint8)), "images are uint8 [8, 3071]"),
    (_with(data=np.zeros((8, 3, 32, 32), np.uint8)), "images are uint8 [8, 3, 32, 32]"),
    (_with(data=[0] * 3072), "images are list"),
    (_with(labels=[0] * 7), "holds 8 images but 7 labels"),
    (_with(labels=[0] * 7 + [10]), "has label 10, outside 0..9"),
    (_with(labels=[0] * 7 + [-1]), "has label -1, outside 0..9"),
    (_with(labels=[0] * 7 + [2**70]), "has label 1180591620717411303424"),
    (_with(labels=[0.0] * 8), "labels is not a list of integers"),
    (_with(labels=[True] * 8), "labels is not a list of integers"),
    (_with(labels=np.zeros(8, np.float64)), "labels is not a list of integers"),
    (_with(labels=b"\x00" * 8), "labels is not a list of integers"),
])
def test_a_batch_that_does_not_fit_is_refused(cifar10, batch, message):
    write_batch(cifar10 / "data_batch_2", batch)
    with pytest.raises(DataError, match="data_batch_2") as err:
        load_dataset("cifar10", cifar10)
    assert message in str(err.value)


def test_labels_as_an_integer_array_are_taken(cifar10):
    write_batch(cifar10 / "data_batch_2", _with(labels=np.arange(8, dtype=np.int64) % 10))
    assert load_dataset("cifar10", cifar10).train.labels[8:16].tolist() == list(range(8))


def test_an_empty_test_split_is_refused(cifar10):
    write_batch(cifar10 / "test_batch", {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    with pytest.raises(DataError, match="test_batch hold no images"):
        load_dataset("cifar10", cifar10)


# -- random bytes ---------------------------------------------------------------------------
VALID = pickle.dumps(cifar_batch(2, seed=3), protocol=2)


def _flipped(positions: list[int], values: list[int]) -> bytes:
    data = bytearray(VALID)
    for position, value in zip(positions, values):
        data[position % len(data)] = value
    return bytes(data)


@st.composite
def batch_structures(draw) -> bytes:
    """Pickles of plausible batch dicts with wrong shapes, dtypes, counts or label types."""
    n = draw(st.integers(0, 3))
    shape = draw(st.sampled_from([(n, 3072), (n, 3071), (n,), (n, 3, 32, 32), (3072, n)]))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]))
    scalar = st.one_of(st.integers(-2, 12), st.integers(), st.floats(), st.binary(max_size=3), st.none(), st.booleans())
    batch = {b"data": draw(st.one_of(st.just(np.ones(shape, dtype)), scalar)),
             b"labels": draw(st.one_of(st.lists(scalar, max_size=4), scalar))}
    return pickle.dumps(batch, protocol=draw(st.sampled_from([2, 3, 4, 5])))


@settings(max_examples=50, deadline=None)
@given(content=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda tail: b"\x80\x02" + tail, st.binary(max_size=200)),
    st.builds(_flipped, st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
              st.lists(st.integers(0, 255), min_size=6, max_size=6)),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID) - 1)),
    batch_structures(),
))
def test_random_bytes_as_a_batch_raise_only_data_error(tmp_path_factory, content):
    root = write_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=2, test=2)
    (root / "data_batch_4").write_bytes(content)
    try:
        load_dataset("cifar10", root)
    except DataError as err:
        assert "\n" not in str(err)
