"""The dense records of the tuning database: applied to a module, and set aside when MetaSchedule rejects them."""

from __future__ import annotations

import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from schedules.database import TuningDatabase
from tvm_passes.tuning import tune_and_apply


@I.ir_module
class Small:
    @R.function
    def main(x: R.Tensor((4, 4), "float32")) -> R.Tensor((4, 4), "float32"):
        with R.dataflow():
            gv = R.add(x, x)
            R.output(gv)
        return gv


def test_applying_an_empty_database_leaves_the_module_buildable(tmp_path):
    legalized = tvm.relax.transform.LegalizeOps()(Small)
    applied = tune_and_apply(TuningDatabase(tmp_path / "db"), legalized, tvm.target.Target("llvm"), "x86", trials=0)
    tvm.compile(applied, "llvm")
    assert (tmp_path / "db" / "dense-x86").is_dir()


def test_records_metaschedule_rejects_are_set_aside_and_the_module_still_builds(tmp_path):
    path = tmp_path / "db"
    TuningDatabase(path).dense("x86")
    (path / "dense-x86" / "database_workload.json").write_text("[1, 2]\n")
    messages: list[str] = []
    legalized = tvm.relax.transform.LegalizeOps()(Small)
    applied = tune_and_apply(TuningDatabase(path, warn=messages.append), legalized, tvm.target.Target("llvm"), "x86", 0)
    tvm.compile(applied, "llvm")
    assert len(messages) == 1 and "MetaSchedule cannot read it" in messages[0]
    aside = [p for p in path.iterdir() if p.name.startswith("dense-x86.rejected-")]
    assert len(aside) == 1 and (aside[0] / "database_workload.json").read_text() == "[1, 2]\n"
