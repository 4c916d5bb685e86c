#!/usr/bin/env python
"""Training throughput: the whole step (data, features, forward, backward, optimiser), two loaders side by side.

(a) reference-style loader, as in the soft-positive authors' code: a torch DataLoader whose workers
    decode each clip's mp4 with PyAV and compute its librosa log-mel per sample; the step then
    runs the encoders on the precomputed log-mel;
(b) avc_nb: the decode-once ClipCache, prefetched raw uint8 frames and int16 audio, log-mel and
    augmentation on the device (the `Trainer` of notebook 07).
Both train the same model with the same batch size, in one run, and the ratio is printed, with the
model's FLOPs per clip (forward + backward, counted by torch's FlopCounterMode) so utilisation can
be read off: achieved FLOP/s = clips/s x FLOPs per clip.

    python benchmarks/train_throughput.py --quick                  # CPU smoke run, small model
    python benchmarks/train_throughput.py --preset small           # CPU, small model, 64 px synthetic clips
    python benchmarks/train_throughput.py --preset paper --size 128 --crop 112 --batch 256 --device cuda --compile
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avc_nb.core import autocast, get_device
from avc_nb.data import CacheSpec, load_clip, prepare_cache
from avc_nb.features import logmel_librosa
from avc_nb.losses import infonce
from avc_nb.sampling import SamplingSpec
from avc_nb.synthetic import make_synthetic
from avc_nb.train import TrainConfig, Trainer, augment_frames


class ReferenceDataset(torch.utils.data.Dataset):
    "Per sample: PyAV-decode 8 frames and 1 s of audio from the mp4, librosa log-mel (the authors' loader)."
    def __init__(self, paths, fps, size, crop, n_frames=8, seconds=2.0):
        self.paths, self.fps, self.size, self.crop, self.n_frames, self.seconds = paths, fps, size, crop, n_frames, seconds
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        t0 = rng.integers(0, int(self.seconds * self.fps) - self.n_frames + 1) / self.fps
        v = load_clip(self.paths[i], start=t0, duration=self.n_frames / self.fps, fps=self.fps, size=self.size, audio=False).frames
        a0 = float(np.clip(t0 - 0.25, 0, self.seconds - 1.0))
        au = load_clip(self.paths[i], start=a0, duration=1.0, video=False).audio
        mel = logmel_librosa(au)[:, :100]
        y0, x0 = rng.integers(0, self.size - self.crop + 1, size=2)
        v = v[:, y0:y0 + self.crop, x0:x0 + self.crop]
        if rng.random() < 0.5: v = v[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(v)), torch.from_numpy(mel)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["small", "paper", "avid"], help="encoder sizes (notebook 04)")
    ap.add_argument("--device", default="", help="cpu, cuda, ... (default: the best available)")
    ap.add_argument("--batch", type=int, default=32, help="batch size for both loaders")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loader (after 2 warm-up steps)")
    ap.add_argument("--size", type=int, default=64, help="cached frame size (pixels)")
    ap.add_argument("--crop", type=int, default=56, help="training crop (pixels); the paper's is 112")
    ap.add_argument("--clips", type=int, default=128, help="synthetic clips to generate")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loader")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 24 clips, batch 8, 3 steps")
    ap.add_argument("--skip-reference", action="store_true", help="time only the avc_nb path")
    a = ap.parse_args(argv)
    if a.quick:
        a.clips, a.batch, a.steps = 24, 8, 3
    dev = get_device(a.device or None)
    work = Path(tempfile.mkdtemp(prefix="avc_train_bench_"))
    try:
        n_classes = 8
        man = make_synthetic(work / "data", n_classes=n_classes, clips_per_class=max(1, a.clips // n_classes), size=a.size,
                             fps=16, progress=False, splits=(1.0,))
        prepare_cache(man, work / "cache", CacheSpec(seconds=2.0, fps=16, size=a.size), workers=2, progress=False)
        cfg = TrainConfig(cache_dir=str(work / "cache"), out_dir=str(work / "run"), preset=a.preset, crop=a.crop,
                          sampling=SamplingSpec.preset("random", batch_size=a.batch, drop_last=True), epochs=1000,
                          max_steps=a.steps + 2, progress=False, device=str(dev), compile=a.compile, band_stats_clips=64)
        t = Trainer(cfg)
        model = t.model

        # FLOPs per clip of one training step (forward + backward), counted on a batch of 2
        from torch.utils.flop_counter import FlopCounterMode
        b = t.cache.batch(np.arange(2), n_frames=8, audio_samples=16000)
        fr = augment_frames(torch.from_numpy(b["frames"]).to(dev), a.crop, True)
        au = torch.from_numpy(b["audio"]).to(dev)
        with FlopCounterMode(display=False) as fc:
            e = model(au, fr); (e.audio.sum() + e.video.sum()).backward()
        flops_per_clip = fc.get_total_flops() / 2
        model.zero_grad(set_to_none=True)

        # (b) avc_nb: the Trainer's own loop
        times = []
        t.callbacks.append(lambda tr, m: times.append(time.perf_counter()))
        t.fit(resume=False)
        if dev.type == "cuda": torch.cuda.synchronize()
        new_rate = a.batch * (len(times) - 3) / (times[-1] - times[2])  # steps 3.. after warm-up

        ref_rate = float("nan")
        if not a.skip_reference:
            ds = ReferenceDataset(t.cache.manifest.df["video_path"].tolist(), 16, a.size, a.crop)
            dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers, drop_last=True,
                                             pin_memory=dev.type == "cuda", persistent_workers=a.workers > 0)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            stamps, it = [], iter(dl)
            for step in range(a.steps + 2):
                try: v, mel = next(it)
                except StopIteration: it = iter(dl); v, mel = next(it)
                v, mel = v.to(dev, non_blocking=True), mel.to(dev, non_blocking=True)
                with autocast(dev):
                    xa = model.band_norm(mel).transpose(1, 2).unsqueeze(1)
                    za, zv = model.audio_head(model.audio(xa)), model.encode_video(v)
                    loss = infonce(za.float(), zv.float())
                opt.zero_grad(); loss.backward(); opt.step()
                loss.item(); stamps.append(time.perf_counter())
            ref_rate = a.batch * (len(stamps) - 3) / (stamps[-1] - stamps[2])

        print(f"device: {dev}{' (' + torch.cuda.get_device_name() + ')' if dev.type == 'cuda' else ''}, preset {a.preset}, "
              f"batch {a.batch}, 8 x {a.crop} x {a.crop} frames, 1 s audio, torch threads {torch.get_num_threads()}")
        print(f"model FLOPs per clip (forward + backward): {flops_per_clip / 1e9:.3f} GFLOP")
        print(f"(a) reference loader (PyAV + librosa in {a.workers} workers): {ref_rate:9.1f} clips/s")
        print(f"(b) avc_nb (cache + device features):             {new_rate:9.1f} clips/s "
              f"= {new_rate * flops_per_clip / 1e12:.3f} TFLOP/s achieved")
        print(f"ratio (b)/(a): {new_rate / ref_rate:.1f}x")
        return dict(ref=ref_rate, new=new_rate, flops_per_clip=flops_per_clip)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
