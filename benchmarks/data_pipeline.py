#!/usr/bin/env python
"""Data pipeline speed: the reference-style loader against the decode-once cache, side by side.

(a) reference style, as in the soft-positive authors' loader: for every clip, decode the mp4 with
    PyAV (8 frames and 1 s of audio) and compute the librosa log-mel;
(b) avc_nb: read the same windows from the ClipCache (memory maps, no decoding) and compute the
    log-mel batched with torchaudio (LogMel).
Both are measured in the same run on the same clips, and their ratio printed. Also printed:
prepare_cache's throughput (clips/s) and the cache's bytes per clip.

    python benchmarks/data_pipeline.py                 # the default synthetic set (10 x 30 clips)
    python benchmarks/data_pipeline.py --quick         # a small smoke run
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avc_nb.data import CacheSpec, load_clip, prepare_cache
from avc_nb.features import LogMel, logmel_librosa
from avc_nb.synthetic import make_synthetic


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-classes", type=int, default=10)
    ap.add_argument("--clips-per-class", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="batch size of the cached path")
    ap.add_argument("--workers", type=int, default=2, help="prepare_cache worker processes")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the clips for each path (best is kept)")
    ap.add_argument("--quick", action="store_true", help="3 classes x 4 clips, 1 repeat: a smoke run")
    ap.add_argument("--workdir", default=None, help="where to write data and cache (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n_classes, a.clips_per_class, a.repeats = 3, 4, 1
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="avc_bench_"))
    try:
        t = time.perf_counter()
        man = make_synthetic(work / "data", n_classes=a.n_classes, clips_per_class=a.clips_per_class, progress=False)
        t_synth = time.perf_counter() - t
        spec = CacheSpec(seconds=2.0, fps=8, size=64, sample_rate=16000)
        t = time.perf_counter()
        cache = prepare_cache(man, work / "cache", spec, workers=a.workers, progress=False)
        t_cache = time.perf_counter() - t
        n = len(cache)
        on_disk = sum(f.stat().st_size for f in (work / "cache").rglob("*.npy"))

        # the training windows of the soft-positive paper: 8 frames, 1 s of audio from 0.25 s before
        n_frames, n_samples, offset = 8, 16000, -0.25
        rng = np.random.default_rng(0)
        starts = rng.integers(0, spec.n_frames - n_frames + 1, size=n) / spec.fps
        paths = cache.manifest.df["video_path"].tolist()

        def reference():
            for p, s in zip(paths, starts):
                v = load_clip(p, start=s, duration=n_frames / spec.fps, fps=spec.fps, size=spec.size, audio=False)
                a0 = max(0.0, min(s + offset, spec.seconds - 1.0))
                au = load_clip(p, start=a0, duration=1.0, sample_rate=16000, video=False).audio
                logmel_librosa(au)
                assert v.frames.shape[0] == n_frames

        logmel = LogMel()

        def cached():
            for b in range(0, n, a.batch):
                idx = np.arange(b, min(b + a.batch, n))
                batch = cache.batch(idx, n_frames=n_frames, audio_samples=n_samples, audio_offset=offset, starts=starts[idx])
                frames = torch.from_numpy(batch["frames"])
                with torch.no_grad():
                    logmel(torch.from_numpy(batch["audio"]))
                assert frames.shape[1] == n_frames

        def best(fn):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
            return min(times)

        t_ref, t_new = best(reference), best(cached)
        print(f"clips: {n} ({a.n_classes} classes x {a.clips_per_class}), torch threads {torch.get_num_threads()}")
        print(f"make_synthetic: {t_synth:.1f} s ({n / t_synth:.1f} clips/s)")
        print(f"prepare_cache:  {t_cache:.1f} s ({n / t_cache:.1f} clips/s, {a.workers} workers), "
              f"{on_disk / n:,.0f} bytes per clip on disk (formula {spec.bytes_per_clip:,})")
        print(f"(a) reference, PyAV decode + librosa per clip: {n / t_ref:8.1f} clips/s")
        print(f"(b) ClipCache + batched LogMel (batch {a.batch}):  {n / t_new:8.1f} clips/s")
        print(f"ratio (b)/(a): {t_ref / t_new:.1f}x")
        return dict(ref=n / t_ref, cached=n / t_new, ratio=t_ref / t_new, prepare=n / t_cache, bytes_per_clip=on_disk / n)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
