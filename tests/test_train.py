"""Training runs that need real processes: resume after SIGKILL, and DistributedDataParallel with gloo."""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avc_nb.data import CacheSpec, prepare_cache
from avc_nb.sampling import SamplingSpec
from avc_nb.synthetic import make_synthetic
from avc_nb.train import TrainConfig, load_checkpoint

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from avc_nb.train import TrainConfig, train
    train(TrainConfig.from_yaml(sys.argv[1]))
""")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    man = make_synthetic(work / "data", n_classes=4, clips_per_class=6, progress=False)
    prepare_cache(man, work / "cache", CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)
    (work / "run.py").write_text(SCRIPT)
    return work


def _cfg(work, name, **kw):
    base = dict(cache_dir=str(work / "cache"), out_dir=str(work / name), crop=56, epochs=4, prefetch=2,
                sampling=SamplingSpec.preset("soft-positive", batch_size=6), lr=1e-3, progress=False,
                band_stats_clips=50, checkpoint_every=3)
    cfg = TrainConfig(**{**base, **kw})
    path = work / f"{name}.yaml"
    cfg.to_yaml(path)
    return path


def _losses(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_after_sigkill_gives_the_same_losses(cache_dir):
    work = cache_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = _cfg(work, "full")
    subprocess.run([sys.executable, str(work / "run.py"), str(full)], check=True, env=env, timeout=300)
    ref = _losses(work / "full")
    n = len(ref)
    assert n % 4 == 0 and n >= 8, n  # 4 epochs of the same number of batches

    killed = _cfg(work, "killed")
    p = subprocess.Popen([sys.executable, str(work / "run.py"), str(killed)], env=env)
    ckpt = work / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    # wait until a checkpoint exists and the run has gone past it, then kill it without warning
    while time.time() < deadline:
        if ckpt.exists() and (work / "killed" / "log.csv").exists() and len(_losses(work / "killed")) >= 5:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    at = load_checkpoint(ckpt)["step"]
    assert 3 <= at < n

    subprocess.run([sys.executable, str(work / "run.py"), str(killed)], check=True, env=env, timeout=300)
    got = _losses(work / "killed")
    assert [s for s, _ in got] == list(range(1, n + 1))
    np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=0, atol=1e-5)


def test_resume_refuses_a_different_config(cache_dir):
    work = cache_dir
    a = _cfg(work, "cfgdiff", max_steps=2)
    subprocess.run([sys.executable, str(work / "run.py"), str(a)], check=True, timeout=300)
    b = _cfg(work, "cfgdiff", max_steps=4, lr=5e-4)
    out = subprocess.run([sys.executable, str(work / "run.py"), str(b)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "different config" in out.stderr and "lr" in out.stderr


def test_ddp_two_processes_gloo(cache_dir):
    work = cache_dir
    cfg = _cfg(work, "ddp", max_steps=4, checkpoint_every=0, prefetch=0)
    probe = work / "ddp_check.py"
    probe.write_text(textwrap.dedent("""
        import sys, os, torch, hashlib
        torch.set_num_threads(1)
        import torch.distributed as dist
        from avc_nb.train import TrainConfig, Trainer
        t = Trainer(TrainConfig.from_yaml(sys.argv[1]))
        h = t.fit(resume=False)
        w = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        digest = hashlib.sha1(w.numpy().tobytes()).hexdigest()
        with open(os.path.join(sys.argv[2], f"rank{t.rank}.txt"), "w") as f:
            f.write(f"{t.world} {len(h)} {digest} {len(t.sampler.batch_sampler.shard(torch.arange(6)))}\\n")
        dist.destroy_process_group()
    """))
    import socket
    with socket.socket() as s:  # a free port on the loopback interface for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(port), str(probe), str(cfg), str(work)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (work / "rank0.txt").read_text().split(), (work / "rank1.txt").read_text().split()
    assert r0[0] == r1[0] == "2"            # world size 2
    assert r0[1] == r1[1] == "4"            # both ranks ran 4 steps
    assert r0[2] == r1[2]                   # identical weights after DDP steps
    assert r0[3] == r1[3] == "3"            # each rank got half of each batch of 6
    losses = _losses(work / "ddp")
    assert len(losses) == 4 and all(np.isfinite(l) for _, l in losses)
    assert not (work / "ddp" / "rank1").exists()
