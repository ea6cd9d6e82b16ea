"""The JSON tuning database: round trip, merge between writers, corrupt and foreign files set aside
(also bad records, and random bytes: never an error but TuningDatabaseError)."""

from __future__ import annotations

import json
import warnings

import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from schedules.database import FORMAT_NAME, FORMAT_VERSION, Record, TuningDatabase, Workload, density_bucket
from schedules.errors import TuningDatabaseError
from schedules.kernels.knobs import Knobs

WORKLOAD = Workload("irregular", "forward", (8, 4, 3, 3), (2, 4, 8, 8), 1, 0.1, "x86")


def test_round_trip_and_merge(tmp_path):
    path = tmp_path / "db.json"
    first, second = TuningDatabase(path), TuningDatabase(path)
    first.commit(WORKLOAD, Record(Knobs(rows=2, width=8), 1e-3, 2e-3, 5e-3, 4))
    other = Workload("block", "grad_weight", (8, 4, 3, 3), (2, 4, 8, 8), 2, 0.05, "x86")
    second.commit(other, Record(Knobs(lanes=8, chunks=2), 2e-3, trials=3))
    reloaded = TuningDatabase(path)
    assert len(reloaded) == 2
    assert reloaded.lookup(WORKLOAD).knobs == Knobs(rows=2, width=8)
    assert reloaded.lookup(other).trials == 3
    reloaded.commit(WORKLOAD, Record(Knobs(rows=4, width=8), 5e-3, trials=2))
    assert TuningDatabase(path).lookup(WORKLOAD).seconds == 1e-3  # a slower record does not replace a faster one
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    "content, kind",
    [
        ("{not json", "corrupt"),
        (json.dumps({"format": "someone else's", "records": {}}), "foreign"),
        (json.dumps({"format": FORMAT_NAME, "version": 1, "tvm": "0.19.0", "records": {}}), "foreign"),
    ],
)
def test_bad_file_is_kept_aside_with_a_warning(tmp_path, content, kind):
    path = tmp_path / "db.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="started a fresh one"):
        database = TuningDatabase(path)
    assert len(database) == 0
    aside = list(tmp_path.glob(f"db.json.{kind}-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
    database.commit(WORKLOAD, Record(Knobs(), 1e-3))
    assert TuningDatabase(path).lookup(WORKLOAD) is not None


def _database_file(records: object) -> str:
    return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tvm": tvm.__version__, "records": records})


GOOD = Record(Knobs(rows=2, width=8), 1e-3).to_json()


@pytest.mark.parametrize("record", [
    [1, 2], "fast", {}, {**GOOD, "seconds": "slow"}, {**GOOD, "seconds": -1.0}, {**GOOD, "seconds": float("nan")},
    {**GOOD, "knobs": {"rows": "two"}}, {**GOOD, "knobs": {"rows": -2}}, {**GOOD, "knobs": {"tile_outer": 1}},
    {**GOOD, "knobs": [2, 8]}, {**GOOD, "trials": "many"},
    {**GOOD, "default_seconds": "x"}, {**GOOD, "torch_seconds": 0},
])
def test_a_file_with_a_bad_record_is_kept_aside(tmp_path, record):
    path = tmp_path / "db.json"
    content = _database_file({WORKLOAD.key(): GOOD, "other": record})
    path.write_text(content)
    with pytest.warns(UserWarning, match="its record 'other' is not a tuning record"):
        database = TuningDatabase(path)
    assert database.lookup(WORKLOAD) is None
    assert [p.read_text() for p in tmp_path.glob("db.json.corrupt-*")] == [content]


@settings(max_examples=50, deadline=None)
@given(content=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda records: _database_file(records).encode(), st.dictionaries(
        st.just(WORKLOAD.key()) | st.text(max_size=4),
        st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["knobs", "seconds", "rows", "width", "tile_outer", "trials"]), inner, max_size=4),
                     max_leaves=8), max_size=2)),
))
def test_random_bytes_as_a_tuning_database_raise_only_its_own_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("db") / "db.json"
    path.write_bytes(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            database = TuningDatabase(path)
        if database.lookup(WORKLOAD) is not None:
            assert database.lookup(WORKLOAD).seconds > 0
        database.commit(WORKLOAD, Record(Knobs(), 1e-3))
    except TuningDatabaseError as err:
        assert "\n" not in str(err)
    aside = [p for p in path.parent.iterdir() if p.name != "db.json"]
    assert [p.read_bytes() for p in aside] in ([], [content])  # a file set aside is kept whole


def test_density_buckets():
    assert density_bucket(0.1) == 0.1
    assert density_bucket(0.11) == 0.1
    assert density_bucket(0.001) == 0.01
    assert density_bucket(0.45) == 0.5
