"""``python -m schedules.bench`` on one small layer: JSON written, ratios present, markdown table printed."""

from __future__ import annotations

import json

from schedules.bench import DIRECTIONS, main


def test_bench_writes_json_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--model", "resnet20", "--layers", "64x64@8 s1", "--batch", "2", "--rounds", "1", "--number", "1",
            "--schemes", "irregular,channel", "--densities", "0.1", "--db", str(tmp_path / "db.json"), "--out", str(out)]
    assert main(args) == 0
    payload = json.loads(out.read_text())
    assert [r["scheme"] for r in payload["records"]] == ["irregular", "channel"]
    for record in payload["records"]:
        assert set(record["directions"]) == set(DIRECTIONS)
        assert all(d["vs_dense"] > 0 and d["vs_masked"] > 0 for d in record["directions"].values())
    assert "| layer | scheme |" in capsys.readouterr().out


def test_bench_unknown_scheme_is_one_line(tmp_path, capsys):
    assert main(["--schemes", "diagonal", "--out", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
