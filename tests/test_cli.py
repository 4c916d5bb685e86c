"""The commands as a user runs them, each in its own process, on a tiny synthetic set."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BIN = Path(sys.executable).parent


def run(*args, ok=True, timeout=600):
    out = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout,
                         env={"OMP_NUM_THREADS": "2", "PATH": str(BIN) + ":/usr/bin:/bin"})
    if ok:
        assert out.returncode == 0, f"{args}: {out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_synth_cache_train_resume_probe(work):
    run("avc_synth", work / "data", "--classes", 3, "--clips-per-class", 6, "--seed", 3)
    assert (work / "data" / "manifest.csv").exists()
    out = run("avc_cache", work / "data", work / "cache", "--workers", 0)
    assert "ClipCache(18 clips, 3 classes" in out.stdout

    cfg = run("avc_train", "--cache-dir", work / "cache", "--out-dir", work / "run", "--strategy", "soft-positive",
              "--batch-size", 5, "--max-steps", 2, "--set", "crop=48", "--set", "progress=false", "--print-config").stdout
    (work / "run.yaml").write_text(cfg)
    out = run("avc_train", "--config", work / "run.yaml")
    assert "trained 2 steps" in out.stdout
    # the run's own config.yaml, with more steps, continues the same run from its checkpoint
    out = run("avc_train", "--config", work / "run" / "config.yaml", "--max-steps", 4)
    assert "trained 4 steps" in out.stdout
    log = pd.read_csv(work / "run" / "log.csv")
    assert log["step"].tolist() == [1, 2, 3, 4]
    # the same config once more: the Trainer says the run is complete, and the command adds no "trained" summary
    out = run("avc_train", "--config", work / "run" / "config.yaml", "--max-steps", 4)
    assert "the run is complete" in out.stdout and "trained" not in out.stdout, out.stdout
    assert pd.read_csv(work / "run" / "log.csv")["step"].tolist() == [1, 2, 3, 4]

    out = run("avc_probe", work / "run" / "checkpoints" / "last.pt", "--epochs", 5, "--k", 3)
    table = pd.read_csv(work / "run" / "checkpoints" / "probe_audio.csv", index_col=0)
    assert set(table.index) == {"linear", "knn"} and table["top1"].between(0, 100).all()
    assert (work / "run" / "checkpoints" / "confusion_audio_linear.png").exists()


def test_bad_input_gives_a_clear_message(work):
    out = run("avc_cache", work / "nothing_here", work / "c2", ok=False)
    assert out.returncode != 0 and "nothing_here" in out.stderr
    out = run("avc_train", "--set", "lerning_rate=1", "--print-config", ok=False)
    assert out.returncode != 0 and "lerning_rate" in out.stderr
    out = run("avc_probe", work / "missing.pt", ok=False)
    assert out.returncode != 0 and "missing.pt" in out.stderr


def test_replicate_tiny(work):
    out = run("avc_replicate", "--out", work / "rep", "--variants", "Random", "Soft-positive", "--sizes", 3, "--seeds", 2,
              "--epochs", 1, "--set", "n_classes=3", "--set", "test_clips_per_class=3", "--set", "ood_clips_per_class=4",
              "--set", "pseudo_clips_per_class=3", "--set", "batch_size=6", "--set", "crop=48", "--set", "probe_epochs=3",
              "--set", "progress=false", "--set", "workers=0", "--set", "finetune_epochs=1")
    assert "Claim check" in out.stdout and "Published" in out.stdout
    res = pd.read_csv(work / "rep" / "results.csv")
    assert len(res) == 4 and set(res.variant) == {"Random", "Soft-positive"}
    assert (work / "rep" / "figure.png").exists()


def test_replicate_robust_tiny(work):
    "avc_replicate --study robust: notebook 13's study on a tiny configuration, through the Trainer, tables printed."
    out = run("avc_replicate", "--study", "robust", "--out", work / "robust", "--variants", "InfoNCE", "Weighted", "--seeds", 2,
              "--epochs", 2, "--set", "n_classes=3", "--set", "clips_per_class=8", "--set", "probe_clips_per_class=6",
              "--set", "batch_size=8", "--set", "fractions=[0.5]", "--set", "hidden=16", "--set", "proj_dim=8",
              "--set", "probe_epochs=3", "--set", "progress=false", "--set", "workers=0")
    assert "Claim checks" in out.stdout and "avc_replicate --study robust:" in out.stdout
    res = pd.read_csv(work / "robust" / "results.csv")
    runs = res[res.objective != "Inputs (no pretraining)"]
    assert len(runs) == 4 and set(runs.objective) == {"InfoNCE", "Weighted"} and (runs.steps == 2 * 3).all()
    assert (work / "robust" / "runs" / "weighted_off0.5_s1" / "train" / "log.csv").exists()   # trained by the Trainer
    assert (work / "robust" / "robust.yaml").exists()
    out = run("avc_replicate", "--study", "robust", "--sizes", 8, ok=False)
    assert out.returncode == 1 and "--sizes" in out.stderr


def test_replicate_scenes_tiny(work):
    "avc_replicate --study scenes: notebook 16's study on a tiny configuration, report written, options that do not apply refused."
    out = run("avc_replicate", "--study", "scenes", "--out", work / "scenes", "--seeds", 2, "--set", "steps=2",
              "--set", "clips_per_class=12", "--set", "eval_every=1", "--set", "n_classes=3")
    assert "avc_replicate --study scenes:" in out.stdout
    study = json.loads((work / "scenes" / "study.json").read_text())
    assert study["config"]["steps"] == 2 and study["config"]["seeds"] == [0, 1]
    assert (work / "scenes" / "table.md").exists() and (work / "scenes" / "figure.png").exists()
    out = run("avc_replicate", "--study", "scenes", "--epochs", 3, ok=False)
    assert out.returncode == 1 and "--epochs" in out.stderr and "Traceback" not in out.stderr
