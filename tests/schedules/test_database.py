"""The tuning database directory: round trip, merge between writers, and what it sets aside (kept byte for
byte; also bad records, and random bytes: never an error but TuningDatabaseError)."""

from __future__ import annotations

import json

import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.cache import CACHE_ENV_VAR
from schedules.database import (FORMAT_NAME, FORMAT_VERSION, Record, TuningDatabase, Workload, default_directory,
                                density_bucket)
from schedules.errors import TuningDatabaseError, TuningDatabaseWarning
from schedules.kernels.knobs import Knobs

WORKLOAD = Workload("irregular", "forward", (8, 4, 3, 3), (2, 4, 8, 8), 1, 0.1, "x86")
GOOD = Record(Knobs(rows=2, width=8), 1e-3, 2e-3, 5e-3, 4)


def _opened(path) -> tuple[TuningDatabase, list[str]]:
    messages: list[str] = []
    return TuningDatabase(path, warn=messages.append), messages


def _aside(path, kind: str) -> dict:
    return {p.name.split(f".{kind}-")[0]: p for p in path.iterdir() if f".{kind}-" in p.name}


def test_the_default_directory_is_under_the_one_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert default_directory() == tmp_path / "cache" / "tune-db"
    assert TuningDatabase().path == tmp_path / "cache" / "tune-db"


def test_round_trip_and_merge(tmp_path):
    path = tmp_path / "db"
    first, second = TuningDatabase(path), TuningDatabase(path)
    meta = json.loads((path / "meta.json").read_text())
    assert meta == {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": tvm.__version__}
    first.commit(WORKLOAD, GOOD)
    other = Workload("block", "grad_weight", (8, 4, 3, 3), (2, 4, 8, 8), 2, 0.05, "x86")
    second.commit(other, Record(Knobs(lanes=8, chunks=2), 2e-3, trials=3))
    reloaded, messages = _opened(path)
    assert messages == [] and len(reloaded) == 2
    assert reloaded.lookup(WORKLOAD) == GOOD
    assert reloaded.lookup(other).trials == 3
    reloaded.commit(WORKLOAD, Record(Knobs(rows=4, width=8), 5e-3, trials=2))
    assert TuningDatabase(path).lookup(WORKLOAD).seconds == 1e-3  # a slower record does not replace a faster one
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "sparse.json"]


@pytest.mark.parametrize(
    "content, good_left",
    [
        ("{not json", 0),
        (json.dumps({"format": "someone else's", "entries": []}), 0),
        (json.dumps({"records": {WORKLOAD.key(): GOOD.to_json(), "x": {"knobs": {"rows": "two"}, "seconds": 1}}}), 1),
        (json.dumps({"records": {"y": {"knobs": {}, "seconds": float("nan")}, "z": {"knobs": [], "seconds": 1.0}}}), 0),
    ],
)
def test_bad_sparse_records_are_kept_aside_and_their_good_records_kept(tmp_path, content, good_left):
    path = tmp_path / "db"
    TuningDatabase(path)
    (path / "sparse.json").write_text(content)
    with pytest.warns(TuningDatabaseWarning, match="a fresh file starts"):
        database = TuningDatabase(path)
    assert len(database) == good_left
    aside = _aside(path, "corrupt")
    assert set(aside) == {"sparse.json"} and aside["sparse.json"].read_text() == content
    database.commit(Workload("pattern", "forward", (8, 4, 3, 3), (2, 4, 8, 8), 1, 0.1, "x86"), Record(Knobs(), 1e-3))
    assert len(TuningDatabase(path)) == good_left + 1


def test_a_directory_of_another_tvm_is_set_aside_whole(tmp_path):
    path = tmp_path / "db"
    path.mkdir()
    old_meta = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": "0.18.0"})
    (path / "meta.json").write_text(old_meta)
    (path / "sparse.json").write_text(json.dumps({"records": {WORKLOAD.key(): GOOD.to_json()}}))
    (path / "dense-x86").mkdir()
    (path / "dense-x86" / "database_tuning_record.json").write_text("[1, 2]\n")
    database, messages = _opened(path)
    assert len(messages) == 1 and "TVM 0.18.0" in messages[0] and "fresh database" in messages[0]
    assert len(database) == 0
    aside = _aside(path, "foreign")
    assert set(aside) == {"meta.json", "sparse.json", "dense-x86"}
    assert aside["meta.json"].read_text() == old_meta
    assert (aside["dense-x86"] / "database_tuning_record.json").read_text() == "[1, 2]\n"
    assert json.loads((path / "meta.json").read_text())["tvm"] == tvm.__version__


@pytest.mark.parametrize("workloads", ["[1, 2]\n", '["not base64!", "x"]\n', "{ not json\n"])
def test_dense_records_metaschedule_rejects_are_set_aside_byte_for_byte(tmp_path, workloads):
    path = tmp_path / "db"
    TuningDatabase(path).dense("x86")
    written = path / "dense-x86" / "database_workload.json"
    written.write_text(workloads)
    database, messages = _opened(path)
    assert messages == []  # read on first use, as MetaSchedule reads it
    records = database.dense("x86")
    assert len(messages) == 1 and "MetaSchedule cannot read it" in messages[0] and "\n" not in messages[0]
    assert len(records.get_all_tuning_records()) == 0
    aside = _aside(path, "rejected")
    assert set(aside) == {"dense-x86"}
    assert (aside["dense-x86"] / "database_workload.json").read_text() == workloads
    assert (path / "dense-x86").is_dir()


def _sparse_file(records: object) -> str:
    return json.dumps({"records": records})


BAD_RECORDS = [
    None, [1, 2], "fast", {}, {**GOOD.to_json(), "knobs": None}, {**GOOD.to_json(), "seconds": "slow"}, {**GOOD.to_json(), "seconds": -1.0},
    {**GOOD.to_json(), "seconds": float("nan")}, {**GOOD.to_json(), "knobs": {"rows": "two"}},
    {**GOOD.to_json(), "knobs": {"rows": -2}}, {**GOOD.to_json(), "knobs": {"tile_outer": 1}},
    {**GOOD.to_json(), "knobs": [2, 8]}, {**GOOD.to_json(), "trials": "many"},
    {**GOOD.to_json(), "default_seconds": "x"}, {**GOOD.to_json(), "torch_seconds": 0},
]


@pytest.mark.parametrize("record", BAD_RECORDS)
def test_a_file_with_a_bad_record_is_kept_aside_and_its_good_record_kept(tmp_path, record):
    path = tmp_path / "db"
    TuningDatabase(path)
    content = _sparse_file({WORKLOAD.key(): GOOD.to_json(), "other": record})
    (path / "sparse.json").write_text(content)
    database, messages = _opened(path)
    assert len(messages) == 1 and "holding records that do not parse" in messages[0]
    assert database.lookup(WORKLOAD) == GOOD and len(database) == 1
    assert _aside(path, "corrupt")["sparse.json"].read_text() == content


@settings(max_examples=50, deadline=None)
@given(name=st.sampled_from(["sparse.json", "meta.json"]), content=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda records: _sparse_file(records).encode(), st.dictionaries(
        st.just(WORKLOAD.key()) | st.text(max_size=4),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["knobs", "seconds", "rows", "width", "tile_outer", "trials"]), inner, max_size=4),
                     max_leaves=8), max_size=2)),
    st.just(b"[" * 100_000),  # nested past the recursion limit
))
def test_random_bytes_in_a_tuning_database_raise_only_its_own_error(tmp_path_factory, name, content):
    path = tmp_path_factory.mktemp("db") / "db"
    TuningDatabase(path)
    (path / name).write_bytes(content)
    try:
        database, _ = _opened(path)
        if database.lookup(WORKLOAD) is not None:
            assert database.lookup(WORKLOAD).seconds > 0
        database.commit(WORKLOAD, Record(Knobs(), 1e-3))
    except TuningDatabaseError as err:
        assert "\n" not in str(err)
    kept = [p for p in path.iterdir() if p.name.startswith(f"{name}.")]
    assert [p.read_bytes() for p in kept] in ([], [content])  # a file set aside is kept whole


def test_density_buckets():
    assert density_bucket(0.1) == 0.1
    assert density_bucket(0.11) == 0.1
    assert density_bucket(0.001) == 0.01
    assert density_bucket(0.45) == 0.5
