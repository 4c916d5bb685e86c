"""Training faults made for real (issue 7): finished runs, batches of one clip, concurrent runs, resumed epoch means,
damaged checkpoints and failed writes, unlabelled clips, unwritable run folders, and the config checks."""
import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avc_nb.core import AvcError, ConfigError
from avc_nb.data import CacheSpec, Manifest, prepare_cache
from avc_nb.sampling import SamplingSpec, derive_seed, keyed_generator
from avc_nb.synthetic import make_synthetic
from avc_nb.train import (BatchStream, CheckpointError, CheckpointWriteError, ConfigMismatch, RunFolderLocked, TrainConfig,
                          Trainer, TrainingDiverged, augment_frames, load_checkpoint, save_checkpoint)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# a run as a separate process: fit, optionally SIGKILL itself right after step KILL_AT (a kill at a chosen moment)
RUN = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from avc_nb.train import TrainConfig, Trainer
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    def cb(trainer, m):
        if m['step'] == kill_at: os.kill(os.getpid(), signal.SIGKILL)
    t = Trainer(TrainConfig.from_yaml(sys.argv[1]), callbacks=[cb])
    h = t.fit()
    print(f"done {t.step} complete={t.complete}")
""")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("faults")
    man = make_synthetic(w / "data", n_classes=4, clips_per_class=6, progress=False)
    prepare_cache(man, w / "cache", CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)
    df = man.df.copy()
    df.loc[df.index[df['split'] == 'train'][:3], 'label'] = ''          # three training clips without a label
    prepare_cache(Manifest(df), w / "cache_unlabelled", CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)
    (w / "run.py").write_text(RUN)
    return w


def _cfg(work, name, write=True, **kw):
    base = dict(cache_dir=str(work / "cache"), out_dir=str(work / name), crop=56, epochs=2, prefetch=2, lr=1e-3,
                sampling=SamplingSpec.preset("soft-positive", batch_size=6, drop_last=False), progress=False,
                band_stats_clips=50)
    cfg = TrainConfig(**{**base, **kw})
    if write: cfg.to_yaml(work / f"{name}.yaml")
    return cfg


def _run(work, name, *extra, timeout=300):
    return subprocess.run([sys.executable, str(work / "run.py"), str(work / f"{name}.yaml"), *map(str, extra)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def _epochs(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "epochs.jsonl").read_text().splitlines()]


# -- item 3: a finished run ------------------------------------------------------------------------------------------
def test_rerunning_a_finished_run_says_complete_and_more_epochs_continue(work):
    _cfg(work, "finished", epochs=2)
    first = _run(work, "finished")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _run(work, "finished")                        # before: UnboundLocalError 'done'
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the run is complete (8 steps" in again.stdout and "done 8 complete=True" in again.stdout
    log_before = (work / "finished" / "log.csv").read_text()
    assert len(_epochs(work / "finished")) == 2
    _cfg(work, "finished", epochs=3)                      # raising epochs continues the run
    more = _run(work, "finished")
    assert more.returncode == 0, more.stderr[-2000:]
    assert "done 12 complete=False" in more.stdout
    assert (work / "finished" / "log.csv").read_text().startswith(log_before)
    assert [e["epoch"] for e in _epochs(work / "finished")] == [0, 1, 2]


def test_avc_train_command_on_a_finished_run_exits_0(work):
    cmd = [sys.executable, "-c", "from avc_nb.cli import avc_train_cli; avc_train_cli()"]
    _cfg(work, "cli_done", max_steps=2)
    first = subprocess.run(cmd + ["--config", str(work / "cli_done.yaml")], capture_output=True, text=True, env=ENV, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(cmd + ["--config", str(work / "cli_done" / "config.yaml")], capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "run is complete (2 steps" in again.stdout


# -- item 4: a batch of one clip -------------------------------------------------------------------------------------
def test_a_batch_of_one_clip_never_reaches_a_step(work, monkeypatch):
    # 20 training clips in batches of 19 without drop_last: 20 % 19 == 1. Before, BatchNorm crashed at the second step;
    # now notebook 05's samplers drop the one-clip batch and the run trains
    cfg = _cfg(work, "one", write=False, epochs=2, sampling=SamplingSpec.preset("random", batch_size=19, drop_last=False))
    t = Trainer(cfg)
    assert [len(b) for b in t.sampler.batch_sampler.global_batches()] == [19]
    assert len(t.fit()) == 2
    # a sampler that still yields a batch of one clip (the one-clip rule switched off) is refused by the Trainer
    # before anything is trained or written, with the rule and the numbers
    from avc_nb.sampling import LabelBatchSampler
    monkeypatch.setattr(LabelBatchSampler, "min_batch", property(lambda self: 1))
    with pytest.raises(AvcError) as e:
        Trainer(cfg.replace(out_dir=str(work / "one_refused")))
    msg = str(e.value)
    for part in ("1 batch(es) of 1 clip", "20 clips in batches of 19", "20 % 19 = 1", "drop_last=True", "at least 2 clips"):
        assert part in msg, (part, msg)
    assert not (work / "one_refused" / "log.csv").exists() and not (work / "one_refused" / "checkpoints").exists()


def test_multi_positive_reaches_the_loss(work):
    losses = {}
    for mp in ("milnce", "supcon"):
        cfg = _cfg(work, f"mp_{mp}", write=False, max_steps=1, positives="labels", multi_positive=mp,
                   sampling=SamplingSpec.preset("random", batch_size=10))
        losses[mp] = Trainer(cfg).fit(resume=False)[0]["loss"]
    assert abs(losses["milnce"] - losses["supcon"]) > 1e-4, losses


# -- item 5: one run per folder --------------------------------------------------------------------------------------
def test_a_second_process_on_the_same_run_folder_stops_naming_the_holder(work):
    _cfg(work, "locked", epochs=500)
    p = subprocess.Popen([sys.executable, str(work / "run.py"), str(work / "locked.yaml")], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = work / "locked" / ".lock", time.time() + 120
        while time.time() < deadline and not (lock.exists() and (work / "locked" / "log.csv").exists()):
            time.sleep(0.05)
        assert f"pid {p.pid} on host" in lock.read_text()
        t0 = time.time()
        second = _run(work, "locked")
        assert second.returncode != 0 and p.poll() is None, second.stderr[-2000:]
        assert "in use by another run" in second.stderr and f"pid {p.pid}" in second.stderr
        assert time.time() - t0 < 60
    finally:
        p.send_signal(signal.SIGKILL); p.wait(timeout=30)
    # the kill released the lock: the folder is usable again (the killed run left no checkpoint: a fresh start)
    _cfg(work, "locked", max_steps=1)
    third = _run(work, "locked")
    assert third.returncode == 0 and "done 1" in third.stdout, third.stderr[-2000:]


# -- item 7: epochs.jsonl after a resume -----------------------------------------------------------------------------
@pytest.mark.parametrize("kill_at", [5, 7])
def test_resumed_epoch_means_equal_an_uninterrupted_run(work, kill_at):
    # 4 steps per epoch, checkpoints at steps 3, 6, 9, 12; kill 5: after epoch 0's summary, before the next checkpoint
    # (the line must not be duplicated); kill 7: resumed mid-epoch 1 (its mean must still cover all 4 steps)
    if not (work / "ref" / "epochs.jsonl").exists():
        _cfg(work, "ref", epochs=3, checkpoint_every=3)
        assert _run(work, "ref").returncode == 0
    name = f"killed{kill_at}"
    _cfg(work, name, epochs=3, checkpoint_every=3)
    killed = _run(work, name, kill_at)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(work / name / "checkpoints" / "last.pt")["step"] == 3 * ((kill_at - 1) // 3)
    resumed = _run(work, name)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = _epochs(work / "ref"), _epochs(work / name)
    assert [(e["epoch"], e["step"], e["steps"]) for e in got] == [(e["epoch"], e["step"], e["steps"]) for e in ref] \
        == [(0, 4, 4), (1, 8, 4), (2, 12, 4)]
    np.testing.assert_allclose([e["loss"] for e in got], [e["loss"] for e in ref], rtol=0, atol=1e-6)


# -- item 9: damaged checkpoints and failed writes -------------------------------------------------------------------
class _Boom:
    def __reduce__(self): return (os.system, (f"touch {MARKER}",))
MARKER = Path("/tmp") / f"avc_nb_code_ran_{os.getpid()}"


def test_unreadable_checkpoints_are_named_and_run_no_code(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(dict(config={}, model={"w": torch.zeros(3)}), good)
    data = good.read_bytes()
    cases = {
        "empty.pt": (b"", "the file is empty"),
        "truncated.pt": (data[: len(data) // 2], "truncated or damaged"),
        "random.pt": (np.random.default_rng(0).bytes(4096), "not a torch checkpoint"),
        "evil.pt": (pickle.dumps({"config": {}, "model": _Boom()}, protocol=2), "could run code"),
        "evil4.pt": (pickle.dumps({"config": {}, "model": _Boom()}), "not a torch checkpoint"),
    }
    for name, (blob, why) in cases.items():
        (tmp_path / name).write_bytes(blob)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")          # a valid torch file, not ours
    cases["other.pt"] = (None, "has no 'config', 'model' entry")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    cases["list.pt"] = (None, "holds a list")
    for name, (_, why) in cases.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: not a readable avc_nb checkpoint (") and msg.endswith("; no code was run"), msg
        assert why in msg, (name, msg)
        assert "weights_only" not in msg
    assert not MARKER.exists()
    assert isinstance(CheckpointError("x"), AvcError)
    with pytest.raises(FileNotFoundError): load_checkpoint(tmp_path / "missing.pt")
    load_checkpoint(good)                                                     # the keys load_model needs are there


def test_trainer_resume_checks_every_key_it_needs(work):
    cfg = _cfg(work, "keys", write=False, max_steps=1)
    Trainer(cfg).fit()
    ck = work / "keys" / "checkpoints" / "last.pt"
    st = torch.load(ck, weights_only=True)
    del st["optimizer"]
    torch.save(st, ck)
    with pytest.raises(CheckpointError, match="'optimizer'"):
        Trainer(cfg.replace(max_steps=2)).fit()


def test_a_failed_checkpoint_write_names_the_cause_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    state = {"w": torch.zeros(1000)}
    target = tmp_path / "ck" / "last.pt"
    save_checkpoint(state, target)
    before = target.read_bytes()
    # a real full disk: the temporary file is a link to /dev/full, where every write fails with ENOSPC
    tmp = target.with_name(f".last.pt.tmp-{os.getpid()}")
    os.symlink("/dev/full", tmp)
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint({"w": torch.ones(1000)}, target)
    assert "No space left on device" in str(e.value) and str(target) in str(e.value)
    assert isinstance(e.value, OSError) and isinstance(e.value, AvcError)
    assert not os.path.lexists(tmp) and target.read_bytes() == before       # nothing left behind, old checkpoint intact
    # the same through torch.save raising ENOSPC after it wrote part of the file
    def half_then_full(obj, f, *a, **k):
        f.write(b"x" * 100); raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        save_checkpoint(state, target)
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]
    # the checkpoint folder replaced by a file
    (tmp_path / "ck2").write_text("not a folder")
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(state, tmp_path / "ck2" / "last.pt")
    assert "ck2" in str(e.value)


# -- item 11: unlabelled clips ---------------------------------------------------------------------------------------
def test_unlabelled_clips_warn_label_aware_strategies_and_refuse_supervised(work, capfd):
    cu = str(work / "cache_unlabelled")
    with pytest.raises(AvcError, match="3 of the 20 clips of split 'train' are unlabelled"):
        Trainer(_cfg(work, "sup", write=False, cache_dir=cu, sampling=SamplingSpec.preset("supervised", batch_size=6)))
    capfd.readouterr()
    Trainer(_cfg(work, "sp_unl", write=False, cache_dir=cu, max_steps=1))
    err = capfd.readouterr().err
    assert "3 of the 20 training clips are unlabelled" in err and err.count("\n") == 1
    Trainer(_cfg(work, "rand_unl", write=False, cache_dir=cu, max_steps=1, sampling=SamplingSpec.preset("random", batch_size=6)))
    assert "unlabelled" not in capfd.readouterr().err                    # random sampling reads no label: nothing to say
    Trainer(_cfg(work, "lab_unl", write=False, cache_dir=cu, max_steps=1, positives="labels",
                 sampling=SamplingSpec.preset("random", batch_size=6)))
    assert "positives='labels'" in capfd.readouterr().err


# -- item 13: the run folder is writable before anything is built ----------------------------------------------------
def test_an_unwritable_run_folder_is_refused_first(tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = TrainConfig(cache_dir=str(tmp_path / "no_such_cache"), out_dir=str(tmp_path / "afile" / "run"), epochs=1)
    with pytest.raises(AvcError, match="afile"):        # not the missing cache: the folder is checked first
        Trainer(cfg)


# -- config checks, divergence, mismatch -----------------------------------------------------------------------------
def test_config_ranges_name_the_field():
    for field, value in [("lr", 0), ("lr", -1e-3), ("epochs", -1), ("tau", 0.0), ("lam", 1.5), ("w_min", 0.0),
                         ("crop", -1), ("resize", -2), ("w_momentum", 1.0), ("bank_negatives", 0), ("lr", float("nan"))]:
        with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
            TrainConfig(**{field: value})
    assert TrainConfig.from_dict({"lr": "1e-3"}).lr == 1e-3                # YAML 1.1 reads 1e-3 as text
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig.from_dict({"lr": "notanumber"})
    with pytest.raises(ConfigError, match="loss is 0"):
        TrainConfig(positives="labels", sampling=SamplingSpec.preset("hard-negative"))
    with pytest.raises(ConfigError, match="multi_positive"):
        TrainConfig(multi_positive="mean")
    p = TrainConfig.paper()
    assert (p.preset, p.resize, p.crop, p.sampling.batch_size, p.sampling.drop_last, p.epochs) == ("paper", 112, 0, 309, True, 100)
    assert issubclass(TrainingDiverged, AvcError) and issubclass(ConfigMismatch, AvcError) and issubclass(RunFolderLocked, AvcError)


# -- issue 8: per-rank random draws ----------------------------------------------------------------------------------
def test_ranks_draw_different_windows_and_flips_and_rank_0_is_unchanged(work):
    from avc_nb.data import ClipCache
    cache = ClipCache(work / "cache")
    cfg = _cfg(work, "ranks", write=False)
    subset = cache.indices("train")
    pairs = [(i, i) for i in range(6)]
    labels = torch.as_tensor(cache.labels[subset])
    b0, b1 = (BatchStream(cache, None, subset, cfg, labels, rank=r).make(0, 3, pairs) for r in (0, 1))
    assert not torch.equal(b0["audio"], b1["audio"])                   # other windows on rank 1
    # rank 0 draws exactly what a single process drew before ranks were keyed: generator keyed (seed, epoch, step)
    old = cache.batch(subset[:6], video_indices=subset[:6], n_frames=cfg.n_frames, audio_samples=16000,
                      audio_offset=cfg.audio_offset, generator=np.random.default_rng(derive_seed("windows", cfg.seed, 0, 3)))
    assert np.array_equal(b0["audio"].numpy(), old["audio"]) and np.array_equal(b0["frames"].numpy(), old["frames"])
    fr = torch.arange(64 * 2 * 4 * 5 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(64, 2, 4, 5, 3)
    f0 = augment_frames(fr, flip=True, generator=keyed_generator("augment", 0, 3))
    f1 = augment_frames(fr, flip=True, generator=keyed_generator("augment", 0, 3, 1))
    flipped = lambda f: [bool(torch.equal(f[i], fr[i].flip(2))) for i in range(64)]
    assert flipped(f0) != flipped(f1)
