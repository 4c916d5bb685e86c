"""Issue 7's faults, each created for real and met the way a user meets it: through the console scripts, in their own
processes. Every failing command must print exactly one line `avc_xxx: <message>` on stderr, exit non-zero, and show
no traceback (unless --debug).

Real faults used here: a truncated mp4, a manifest with a broken clip and several shards decoded by 2 worker processes,
manifests that are binary / empty / ragged, a shard file cut short or with one byte flipped, a folder under a regular
file (cannot be created, even by root), and, where this process may mount file systems (root in a container usually
may), a 1-4 MB tmpfs that really fills up and a read-only bind mount. Where mounting is not allowed those two tests
are skipped, and `test_disk_full_injected` injects ENOSPC into the writes instead (it says so in its name)."""
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from avc_nb.data import CacheSpec, ClipCache, Manifest, prepare_cache, read_manifest, write_manifest

BIN = Path(sys.executable).parent
SPEC = CacheSpec(seconds=2.0, fps=8, size=32)


def run(*args, timeout=600):
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "2", "PATH": str(BIN) + ":/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")})


def one_line_error(out, prog, *contains):
    "The command failed with exactly one stderr line `prog: ...` holding every string of `contains`, and no traceback."
    assert out.returncode not in (0, None), out
    err = out.stderr
    assert "Traceback" not in err, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: "), err
    for c in contains: assert str(c) in lines[0], (c, err)
    return lines[0]


def _can_mount():
    d = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True).returncode == 0
        if ok: subprocess.run(["umount", d], check=True)
        return ok
    except FileNotFoundError: return False
    finally: os.rmdir(d)


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="this process may not mount file systems (not root, or no CAP_SYS_ADMIN)")


@pytest.fixture
def tmpfs(tmp_path):
    "Mount a small tmpfs of the given size (bytes) at a fresh folder; unmounted afterwards."
    mounts = []
    def make(size):
        d = tmp_path / f"tmpfs{len(mounts)}"; d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True)
        mounts.append(d); return d
    yield make
    for d in reversed(mounts): subprocess.run(["umount", "-l", str(d)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "34 built-in synthetic clips (2 classes, 32 px): with shard_size 32 (the default), two shards."
    from avc_nb.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("faults")
    man = make_synthetic(root / "data", n_classes=2, clips_per_class=17, size=32, seed=1, progress=False)
    cache = prepare_cache(man, root / "cache", SPEC, workers=0, progress=False)
    return root, man, cache


# -- item 1: a broken clip with worker processes --------------------------------------------------------------------

def test_broken_clip_same_message_with_workers(data, tmp_path):
    root, man, _ = data
    df = man.df.copy()
    victim = Path(df.video_path[20]); broken = tmp_path / victim.name
    broken.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # a really truncated mp4
    df.loc[20, ["video_path", "audio_path"]] = str(broken)
    write_manifest(Manifest(df), tmp_path / "manifest.csv")
    msgs = []
    for w in (0, 2):
        out = run("avc_cache", tmp_path / "manifest.csv", tmp_path / f"cache{w}", "--workers", w)
        msgs.append(one_line_error(out, "avc_cache", broken, "corrupt or truncated"))
        assert "BrokenProcessPool" not in out.stderr
    assert msgs[0] == msgs[1]


# -- item 2: numbers written as text ----------------------------------------------------------------------------------

def test_set_lr_1e3_trains_with_0001(data, tmp_path):
    root, _, cache = data
    out = run("avc_train", "--cache-dir", cache.dir, "--out-dir", tmp_path / "run", "--batch-size", 4, "--max-steps", 1,
              "--set", "progress=false", "--set", "lr=1e-3", "--set", "weight_decay=1E-5")
    assert out.returncode == 0, out.stderr[-3000:]
    import yaml
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["lr"] == 0.001 and isinstance(cfg["lr"], float) and cfg["weight_decay"] == 1e-5
    one_line_error(run("avc_train", "--cache-dir", cache.dir, "--set", "lr=notanumber"), "avc_train",
                   "TrainConfig.lr: expected a number, got 'notanumber'")
    # a config file written by hand with YAML 1.1's string float
    (tmp_path / "hand.yaml").write_text(f"cache_dir: {cache.dir}\nlr: 1e-3\nsampling:\n  batch_size: '8'\n")
    out = run("avc_train", "--config", tmp_path / "hand.yaml", "--print-config")
    assert out.returncode == 0 and "lr: 0.001" in out.stdout and "batch_size: 8" in out.stdout, out


# -- item 6: a full disk ----------------------------------------------------------------------------------------------

@needs_mount
def test_disk_too_small_refused_before_building(data, tmpfs):
    root, man, _ = data
    small = tmpfs("1m")
    t0 = time.time()
    out = run("avc_cache", root / "data", small / "cache", "--workers", 0, "--size", 32)
    need = SPEC.bytes_per_clip * len(man)
    one_line_error(out, "avc_cache", small / "cache", "not enough free disk space", f"{need:,} more bytes")
    assert not any((small / "cache" / "shards").iterdir())


@needs_mount
@pytest.mark.parametrize("workers", [0, 2])
def test_disk_fills_during_build(data, tmpfs, workers):
    "The free space passes the check (by one page) but the files' own overhead fills the disk: ENOSPC mid-build."
    root, man, _ = data
    need = SPEC.bytes_per_clip * len(man)
    disk = tmpfs(str(need + 4 * 4096 + 64 * 1024))
    cache_dir = disk / "cache"; cache_dir.mkdir()
    write_manifest(man, cache_dir / "manifest.csv")  # as prepare_cache writes it, so its pages are counted now
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * (free - need - 2 * 4096))  # leaves need + 2 pages: build.json takes one
    out = run("avc_cache", root / "data", cache_dir, "--workers", workers, "--size", 32)
    line = one_line_error(out, "avc_cache", cache_dir, "the disk filled up while writing the cache", "more bytes")
    assert "Bus error" not in out.stderr and "BrokenProcessPool" not in out.stderr and out.returncode == 1, line
    assert not list((cache_dir / "shards").glob("*.tmp-*"))  # the half-written shard was removed
    # free the space and run again: it finishes, and the cache is whole
    (disk / "filler").unlink()
    out = run("avc_cache", root / "data", cache_dir, "--workers", workers, "--size", 32)
    assert out.returncode == 0, out.stderr
    assert ClipCache(cache_dir).verify() == []


def test_disk_full_injected(data, tmp_path, monkeypatch):
    "Without a small file system to fill: ENOSPC injected into the space reservation of the second array file."
    root, man, _ = data
    import avc_nb.data as D
    calls = {"n": 0}
    real = os.posix_fallocate
    def full(fd, off, n):
        calls["n"] += 1
        if calls["n"] == 2: raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, off, n)
    monkeypatch.setattr(D.os, "posix_fallocate", full)
    with pytest.raises(D.DiskFullError, match=f"{tmp_path / 'c'}: the disk filled up while writing the cache: it needs"):
        prepare_cache(man, tmp_path / "c", SPEC, workers=0, progress=False)
    assert not list((tmp_path / "c" / "shards").glob("*.tmp-*"))


# -- item 8: one line, no traceback -----------------------------------------------------------------------------------

def test_commands_print_one_line(data, tmp_path):
    root, _, cache = data
    one_line_error(run("avc_train", "--out-dir", tmp_path / "r"), "avc_train", "no cache given", "--cache-dir")
    one_line_error(run("avc_train", "--cache-dir", tmp_path / "nope", "--out-dir", tmp_path / "r"), "avc_train", tmp_path / "nope")
    one_line_error(run("avc_cache", tmp_path / "no_data", tmp_path / "c"), "avc_cache", tmp_path / "no_data")
    one_line_error(run("avc_probe", tmp_path / "missing.pt", "--out", tmp_path / "p"), "avc_probe", "missing.pt")
    one_line_error(run("avc_replicate", "--out", tmp_path / "rep", "--set", "n_classes=0"), "avc_replicate")
    one_line_error(run("avc_replicate", "--out", tmp_path / "rep", "--set", "epochs=lots"), "avc_replicate",
                   "ReplicateConfig.epochs: expected an integer, got 'lots'")
    (tmp_path / "taken").mkdir(); (tmp_path / "taken" / "x").write_text("x")
    one_line_error(run("avc_synth", tmp_path / "taken", "--classes", 2, "--clips-per-class", 1, "--quiet"), "avc_synth", "taken")
    # --debug: the traceback, for a bug report
    out = run("avc_train", "--out-dir", tmp_path / "r", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "no cache given" in out.stderr


def test_train_divergence_and_resume_mismatch_one_line(data, tmp_path):
    root, _, cache = data
    base = ["avc_train", "--cache-dir", cache.dir, "--batch-size", 4, "--set", "progress=false"]
    out = run(*base, "--out-dir", tmp_path / "div", "--max-steps", 6, "--set", "lr=1e30", "--set", "grad_clip=0")
    one_line_error(out, "avc_train")
    out = run(*base, "--out-dir", tmp_path / "run", "--max-steps", 1)
    assert out.returncode == 0, out.stderr[-2000:]
    out = run(*base, "--out-dir", tmp_path / "run", "--max-steps", 2, "--set", "tau=0.2")
    one_line_error(out, "avc_train", "tau")


# -- items 10, 11: manifests ------------------------------------------------------------------------------------------

def test_bad_manifests_named(data, tmp_path):
    root, man, _ = data
    good = (root / "data" / "manifest.csv").read_text()
    lines = good.splitlines()
    ncol = len(lines[0].split(","))
    cases = {"photo.csv": (bytes(range(128, 256)) * 8, "not UTF-8 text"), "empty.csv": (b"", "the manifest is empty"),
             "ragged.csv": ("\n".join(lines[:4] + [lines[4] + ",surplus"] + lines[5:]).encode() + b"\n",
                            f"line 5: {ncol + 1} field(s) where the header has {ncol}"),
             "notes.csv": (b"these are my clips\nsee the folder\n", "missing column(s)")}
    for name, (content, why) in cases.items():
        (root / "data" / name).write_bytes(content)
        one_line_error(run("avc_cache", root / "data" / name, tmp_path / name), "avc_cache", root / "data" / name, why)
        assert not (tmp_path / name).exists()  # refused before anything was written


def test_unlabelled_clips_counted(data, tmp_path):
    root, man, _ = data
    df = man.df.copy(); df.loc[[1, 5, 9], "label"] = ""
    write_manifest(Manifest(df), tmp_path / "manifest.csv")
    assert "3 unlabelled" in repr(read_manifest(tmp_path / "manifest.csv"))
    out = run("avc_cache", tmp_path / "manifest.csv", tmp_path / "cache", "--workers", 0, "--size", 32)
    assert out.returncode == 0, out.stderr
    assert "ClipCache(34 clips, 2 classes, 3 unlabelled," in out.stdout, out.stdout


# -- item 12: damaged caches ------------------------------------------------------------------------------------------

def test_truncated_shard_named(data, tmp_path):
    root, _, cache = data
    dmg = tmp_path / "cache"; shutil.copytree(cache.dir, dmg)
    f = dmg / "shards" / "00001" / "audio.npy"
    os.truncate(f, f.stat().st_size - 1000)
    one_line_error(run("avc_train", "--cache-dir", dmg, "--out-dir", tmp_path / "run", "--max-steps", 1), "avc_train",
                   f, "truncated", f"delete the folder {f.parent}")
    one_line_error(run("avc_cache", "--verify", dmg), "avc_cache", f, "truncated")


def test_verify_names_same_size_damage(data, tmp_path):
    root, _, cache = data
    dmg = tmp_path / "cache"; shutil.copytree(cache.dir, dmg)
    out = run("avc_cache", "--verify", dmg)
    assert out.returncode == 0 and "every shard file matches its checksum" in out.stdout, out
    f = dmg / "shards" / "00000" / "frames.npy"
    with open(f, "r+b") as fh: fh.seek(5000); b = fh.read(1); fh.seek(5000); fh.write(bytes([b[0] ^ 0x55]))
    ClipCache(dmg)  # the size and header are intact: opening cannot see it
    one_line_error(run("avc_cache", "--verify", dmg), "avc_cache", "1 damaged file(s)", f, dmg / "shards" / "00000")


# -- item 13: an output folder that cannot be written -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(data):
    root, _, cache = data
    out = run("avc_train", "--cache-dir", cache.dir, "--out-dir", root / "run", "--batch-size", 4, "--max-steps", 1,
              "--set", "progress=false")
    assert out.returncode == 0, out.stderr[-2000:]
    return root / "run" / "checkpoints" / "last.pt"


def test_unwritable_output_refused_before_work_file_in_the_way(data, ckpt, tmp_path):
    "A folder under a regular file cannot be created by anyone, root included."
    root, _, cache = data
    (tmp_path / "file").write_text("a file, not a folder")
    bad = tmp_path / "file" / "out"
    t0 = time.time()
    one_line_error(run("avc_probe", ckpt, "--out", bad, "--epochs", 200), "avc_probe", bad, "is a file, not a folder")
    one_line_error(run("avc_train", "--cache-dir", cache.dir, "--out-dir", bad), "avc_train", bad, "is a file")
    one_line_error(run("avc_replicate", "--out", bad, "--quick"), "avc_replicate", bad, "is a file")
    assert time.time() - t0 < 120


@needs_mount
def test_unwritable_output_refused_before_work_read_only_mount(data, ckpt, tmp_path):
    "A read-only bind mount: root cannot write there either, whatever the permission bits say."
    root, _, cache = data
    ro = tmp_path / "ro"; (tmp_path / "src").mkdir(); ro.mkdir()
    subprocess.run(["mount", "--bind", str(tmp_path / "src"), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        one_line_error(run("avc_probe", ckpt, "--out", ro, "--epochs", 200), "avc_probe", ro, "not writable", "Read-only file system")
        one_line_error(run("avc_train", "--cache-dir", cache.dir, "--out-dir", ro / "run"), "avc_train", ro / "run", "cannot be created")
        one_line_error(run("avc_replicate", "--out", ro, "--quick"), "avc_replicate", ro, "not writable")
        assert not list(ro.iterdir())
    finally: subprocess.run(["umount", "-l", str(ro)])


# -- issue 8: the audio lead is never shortened -----------------------------------------------------------------------

def test_drawn_windows_keep_the_audio_lead(data):
    "On the 2 s built-in clips: 1 s of audio from 0.25 s before 1 s of video, 2000 drawn windows."
    _, _, cache = data
    g = np.random.default_rng(0)
    starts = []
    for _ in range(60):
        b = cache.batch(np.arange(len(cache)), n_frames=8, audio_samples=16000, audio_offset=-0.25, generator=g)
        for k, (i, t) in enumerate(zip(b["index"], b["start"])):
            a0 = int(round((t - 0.25) * 16000))
            assert a0 >= 0 and a0 + 16000 <= cache.spec.n_samples
            np.testing.assert_array_equal(b["audio"][k], cache[i]["audio"][a0:a0 + 16000])
        starts += b["start"].tolist()
    assert min(starts) == 0.25 and max(starts) == 1.0
    assert sorted(set(starts)) == [0.25 + k / 8 for k in range(7)]
