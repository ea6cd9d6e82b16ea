"""The JSON tuning database: round trip, merge between writers, corrupt and foreign files set aside."""

from __future__ import annotations

import json

import pytest

from schedules.database import FORMAT_NAME, Record, TuningDatabase, Workload, density_bucket
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


def test_density_buckets():
    assert density_bucket(0.1) == 0.1
    assert density_bucket(0.11) == 0.1
    assert density_bucket(0.001) == 0.01
    assert density_bucket(0.45) == 0.5
