"""Reading a checkpoint: a damaged, foreign or inconsistent file is a CheckpointError (never a KeyError,
a changed weight or a traceback later), also for random bytes and random contents."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mest.checkpoint import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint, save_checkpoint
from mest.config import TrainConfig
from mest.errors import CheckpointError, MestError
from mest.trainer import Trainer

CONFIG = TrainConfig(model="tiny", epochs=2, update_freq=1, decay_epochs=(1, 2), batch_size=64, remove_epoch=None,
                     sparsity=0.8, backend="torch-mask")


@pytest.fixture(scope="module")
def half_run(small_digits, tmp_path_factory) -> Path:
    """The checkpoint of a real run after one of its two epochs."""
    out = tmp_path_factory.mktemp("run")
    Trainer(CONFIG, out, dataset=small_digits, progress=False).run_epoch()
    return out / CHECKPOINT_NAME


def _payload(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    return {k: v for k, v in state.items() if k not in ("format", "version")}


def test_a_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing")


def _data_offset(path: Path, member: str) -> int:
    """Offset in the file of the first byte of a zip member's (stored) data."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = path.read_bytes()
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def test_a_flipped_weight_byte_fails_the_checksum(half_run, tmp_path):
    damaged = tmp_path / CHECKPOINT_NAME
    data = bytearray(half_run.read_bytes())
    data[_data_offset(half_run, "archive/data/0") + 5] ^= 0x40
    damaged.write_bytes(bytes(data))
    torch.load(damaged, weights_only=True)  # torch alone takes it, with a changed weight
    with pytest.raises(CheckpointError, match="is damaged: archive/data/0 fails its checksum"):
        load_checkpoint(damaged)


def _set(state: dict, path: str, value: object) -> dict:
    *parents, last = path.split("/")
    target = state
    for key in parents:
        target = target[key]
    target[last] = value
    return state


@pytest.mark.parametrize("path, value, message", [
    ("epoch", "1", "its 'epoch' is str, not int"),
    ("epoch", True, "its 'epoch' is bool, not int"),
    ("epoch", 3, "epoch 3 of a 2-epoch run"),
    ("epoch", -1, "epoch -1 of a 2-epoch run"),
    ("model", [1, 2], "its 'model' is list, not dict"),
    ("rng", None, "its 'rng' is NoneType"),
    ("kept_examples", [0, 1], "its 'kept_examples' is list, not Tensor"),
    ("model/conv1.weight", "w", "its weights are not tensors"),
    ("sparse/masks/layer1.0.conv1.weight", torch.ones(8, 8, 3, 1, dtype=torch.bool),
     "mask 'layer1.0.conv1.weight' fits no weight"),
    ("sparse/masks/nonexistent.weight", torch.ones(1, dtype=torch.bool), "mask 'nonexistent.weight' fits no weight"),
    ("sparse/schemes/layer1.0.conv1.weight", "diagonal", "unknown scheme"),
    ("sparse/sparsity", [0.8], "lacks masks, schemes or sparsity"),
    ("config/lr", float("nan"), "lr must be a finite number"),
    ("config/epochs", "2", "epochs must be int"),
    ("config/colour", "red", "unknown configuration keys: colour"),
    ("model_spec/name", "resnet99", "names no model"),
    ("model_spec/num_classes", 0, "names no model"),
])
def test_an_inconsistent_checkpoint_is_refused(half_run, tmp_path, path, value, message):
    bad = tmp_path / CHECKPOINT_NAME
    save_checkpoint(bad, _set(_payload(half_run), path, value))
    with pytest.raises(CheckpointError, match="inconsistent") as err:
        load_checkpoint(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("path, value, message", [
    ("kept_examples", torch.tensor([0, 1, 999]), "its examples are not those of this training set (256)"),
    ("kept_examples", torch.tensor([0, 0, 1]), "its examples are not those"),
    ("kept_examples", torch.tensor([], dtype=torch.int64), "its examples are not those"),
    ("forgetting/events", torch.zeros(3, dtype=torch.int64), "its examples are not those"),
    ("history", [], "history is not one entry per epoch"),
    ("history", [1], "history is not one entry per epoch"),
    ("optimizer/param_groups", [], "cannot be restored"),
    ("rng/torch", torch.zeros(3), "cannot be restored"),
    ("forgetting", {}, "cannot be restored: 'last_correct'"),
])
def test_a_checkpoint_that_does_not_restore_is_refused(half_run, small_digits, tmp_path, path, value, message):
    bad = tmp_path / CHECKPOINT_NAME
    save_checkpoint(bad, _set(_payload(half_run), path, value))
    with pytest.raises(CheckpointError, match="cannot be restored") as err:
        Trainer.resume(load_checkpoint(bad), dataset=small_digits, progress=False)
    assert message in str(err.value)


# -- random bytes and random contents ----------------------------------------------------------
def _must_be_ours(path: Path, dataset) -> None:
    """Load, resume and rebuild the model of ``path``: anything but a mest error is a bug."""
    try:
        checkpoint = load_checkpoint(path)
        model_from_checkpoint(checkpoint)
        Trainer.resume(checkpoint, dataset=dataset, progress=False)
    except MestError as err:
        assert "\n" not in str(err)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(), st.text(max_size=4),
                   st.lists(st.integers(-1, 300), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                   st.builds(torch.tensor, st.lists(st.integers(-1, 300), max_size=3), dtype=st.just(torch.int64)),
                   st.builds(torch.ones, st.integers(0, 3), dtype=st.sampled_from([torch.bool, torch.float32])))
ENTRIES = ["config", "model_spec", "epoch", "model", "sparse", "optimizer", "scheduler", "forgetting", "kept_examples",
           "history", "rng", "config/lr", "config/model", "config/decay_epochs", "model_spec/image_size",
           "model/conv1.weight", "model/bn1.running_mean", "sparse/masks", "sparse/masks/layer1.0.conv1.weight",
           "sparse/schemes/layer1.0.conv1.weight", "sparse/sparsity/layer1.0.conv1.weight", "optimizer/state",
           "optimizer/param_groups", "scheduler/last_epoch", "forgetting/events", "rng/torch"]


@settings(max_examples=50, deadline=None)
@given(entry=st.sampled_from(ENTRIES), value=VALUES)
def test_random_contents_of_a_checkpoint_raise_only_checkpoint_errors(half_run, small_digits, tmp_path_factory, entry, value):
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_NAME
    save_checkpoint(path, _set(_payload(half_run), entry, value))
    _must_be_ours(path, small_digits)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_random_bytes_as_a_checkpoint_raise_only_checkpoint_errors(half_run, small_digits, tmp_path_factory, data):
    valid = half_run.read_bytes()
    content = data.draw(st.one_of(
        st.binary(max_size=300),
        st.builds(lambda tail: b"PK\x03\x04" + tail, st.binary(max_size=300)),
        st.builds(lambda cut: valid[:cut], st.integers(0, len(valid) - 1)),
        st.builds(_zip_of, st.binary(max_size=300)),
        st.builds(lambda flips: bytes(_flip(valid, flips)), st.lists(st.tuples(st.integers(0, len(valid) - 1),
                                                                               st.integers(0, 255)), min_size=1, max_size=8)),
    ))
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_NAME
    path.write_bytes(content)
    _must_be_ours(path, small_digits)


def _zip_of(pickled: bytes) -> bytes:
    """A sound zip archive (checksums right) laid out like torch's, whose pickle is ``pickled``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytearray:
    out = bytearray(data)
    for position, value in flips:
        out[position] = value
    return out
