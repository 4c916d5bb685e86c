"""Smoke runs of the benchmark scripts: they run end to end and print their figures (speed is not asserted)."""
import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_data_pipeline_quick(capsys):
    r = _load("data_pipeline").main(["--quick"])
    out = capsys.readouterr().out
    assert "ratio (b)/(a)" in out and "bytes per clip" in out
    assert all(math.isfinite(v) and v > 0 for v in r.values())
    assert abs(r["bytes_per_clip"] - 260_608) < 200  # the formula of notebook 01, plus .npy headers


def test_train_throughput_quick(capsys):
    r = _load("train_throughput").main(["--quick", "--workers", "1"])
    out = capsys.readouterr().out
    assert "FLOPs per clip" in out and "ratio (b)/(a)" in out
    assert all(math.isfinite(v) and v > 0 for v in r.values())
