"""The tuning database directory: created fresh, reused, and set aside (kept) when corrupt or foreign."""

from __future__ import annotations

import json

import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_passes.tuning import FORMAT, VERSION, TuningDatabase


def _warnings(path):
    messages = []
    return TuningDatabase(path, warn=messages.append), messages


def test_fresh_database_is_created_and_reopened_without_warning(tmp_path):
    db, messages = _warnings(tmp_path / "db")
    assert messages == []
    meta = json.loads((tmp_path / "db" / "meta.json").read_text())
    assert meta == {"format": FORMAT, "version": VERSION, "tvm": tvm.__version__}
    _, messages = _warnings(tmp_path / "db")
    assert messages == [] and not any(".set-aside-" in p.name for p in (tmp_path / "db").iterdir())
    assert len(db.sparse) == 0


def test_database_of_another_tvm_is_set_aside_untouched(tmp_path):
    path = tmp_path / "db"
    path.mkdir()
    old_meta = json.dumps({"format": FORMAT, "version": VERSION, "tvm": "0.18.0"})
    (path / "meta.json").write_text(old_meta)
    (path / "dense-x86").mkdir()
    (path / "dense-x86" / "database_tuning_record.json").write_text("[1, 2]\n")
    _, messages = _warnings(path)
    assert len(messages) == 1 and "TVM 0.18.0" in messages[0] and "fresh database" in messages[0]
    aside = {p.name.split(".set-aside-")[0]: p for p in path.iterdir() if ".set-aside-" in p.name}
    assert set(aside) == {"meta.json", "dense-x86"}
    assert aside["meta.json"].read_text() == old_meta
    assert (aside["dense-x86"] / "database_tuning_record.json").read_text() == "[1, 2]\n"
    assert json.loads((path / "meta.json").read_text())["tvm"] == tvm.__version__


def test_foreign_directory_is_set_aside(tmp_path):
    path = tmp_path / "db"
    path.mkdir()
    (path / "meta.json").write_text("this is not json")
    _, messages = _warnings(path)
    assert len(messages) == 1 and "meta.json is missing or corrupt" in messages[0]


def test_corrupt_sparse_records_warn_through_schedules(tmp_path):
    path = tmp_path / "db"
    TuningDatabase(path)
    (path / "sparse.json").write_text("{ broken")
    _, messages = _warnings(path)
    assert any("sparse.json" in message for message in messages)


@I.ir_module
class Small:
    @R.function
    def main(x: R.Tensor((4, 4), "float32")) -> R.Tensor((4, 4), "float32"):
        with R.dataflow():
            gv = R.add(x, x)
            R.output(gv)
        return gv


def test_applying_an_empty_database_leaves_the_module_buildable(tmp_path):
    db = TuningDatabase(tmp_path / "db")
    legalized = tvm.relax.transform.LegalizeOps()(Small)
    applied = db.tune_and_apply(legalized, tvm.target.Target("llvm"), "x86", trials=0)
    tvm.compile(applied, "llvm")
    assert (tmp_path / "db" / "dense-x86").is_dir()


def test_corrupt_dense_records_are_set_aside(tmp_path):
    path = tmp_path / "db"
    TuningDatabase(path).dense("x86")
    (path / "dense-x86" / "database_workload.json").write_text("{ not json\n")
    _, messages = _warnings(path)
    assert len(messages) == 1 and "dense-x86/database_workload.json is corrupt" in messages[0]
