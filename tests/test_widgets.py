"""The widgets of notebook 14, driven headlessly: set a control's value, check the state and the figure's data."""
import io
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy import stats

from avc_nb.core import AvcError
from avc_nb.data import CacheSpec, prepare_cache
from avc_nb.features import LogMel
from avc_nb.sampling import SamplingSpec, make_sampler
from avc_nb.synthetic import make_synthetic, read_ground_truth
from avc_nb.train import TrainConfig
from avc_nb.widgets import (ClipBrowser, PairingExplorer, ReplicationExplorer, TrainingMonitor, chance_level,
                            paired_differences, running_mean, wav_bytes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    work = tmp_path_factory.mktemp("widgets")
    man = make_synthetic(work / "data", n_classes=3, clips_per_class=5, max_sources=2, progress=False)
    cache = prepare_cache(man, work / "cache", CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)
    return work, man, cache


def test_wav_bytes_keeps_levels_and_refuses_stereo():
    y = (0.05 * np.sin(np.linspace(0, 200, 4000))).astype(np.float32)
    back, sr = sf.read(io.BytesIO(wav_bytes(y, 8000)), dtype="float32")
    assert sr == 8000 and np.abs(back - y).max() < 1 / 16000
    assert abs(np.abs(sf.read(io.BytesIO(wav_bytes(y, 8000, normalize=True)))[0]).max() - 1) < 1e-3
    with pytest.raises(ValueError, match="mono"):
        wav_bytes(np.zeros((2, 10)), 8000)


def test_clip_browser_shows_the_chosen_clip(data):
    work, man, cache = data
    b = ClipBrowser(cache, n_frames=4)
    j = next(i for i in range(len(cache)) if man.df.n_sources[i] == 2)
    b.clip.value = j
    st = b.state
    assert st["clip_id"] == cache.clip_ids[j]
    assert st["frame_indices"] == [0, 5, 10, 15]
    for ax, k in zip(b.fig.axes[:4], st["frame_indices"]):
        np.testing.assert_array_equal(ax.images[0].get_array(), cache.frames(j)[k])
    want = LogMel()(torch.from_numpy(cache.audio(j).astype(np.int16).copy())).numpy()
    np.testing.assert_allclose(b.fig.axes[4].images[0].get_array(), want, atol=1e-4)
    heard = sf.read(io.BytesIO(bytes(b.player.value)))[0]
    assert np.abs(heard - cache.audio(j) / 32768).max() < 2 / 32768
    gt = read_ground_truth(man.df.video_path[j])
    ax = b.fig.axes[1]
    assert len(ax.patches) == len(gt["objects"]) == 2
    x0, y0, x1, y1 = gt["boxes"][0, 5]
    p = ax.patches[0]
    assert (p.get_x() + 0.5, p.get_y() + 0.5, p.get_width(), p.get_height()) == (x0, y0, x1 - x0, y1 - y0)
    assert "hum_hz" in b.info.value
    before = bytes(b.image.value)
    b.clip.value = (j + 1) % len(cache)
    assert bytes(b.image.value) != before and b.state["clip_id"] == cache.clip_ids[(j + 1) % len(cache)]
    bundle = b._repr_mimebundle_()
    assert "image/jpeg" in bundle and "application/vnd.jupyter.widget-view+json" in bundle


def test_clip_browser_reads_a_manifest_csv_and_refuses_other_paths(data):
    work, man, cache = data
    b = ClipBrowser(work / "data" / "manifest.csv", n_frames=2, split="test")
    assert set(man.df.split[[v for _, v in b.clip.options]]) == {"test"}
    assert b.state["frames"][0].shape == (64, 64, 3) and b.state["sample_rate"] == 16000
    with pytest.raises(AvcError, match="not a clip cache"):
        ClipBrowser(work)


def test_pairing_explorer_follows_the_strategy(data):
    _, _, cache = data
    e = PairingExplorer(cache, strategy="soft-positive", batch_size=6, seed=3)
    sub = cache.indices("train")
    ref = next(iter(make_sampler(SamplingSpec.preset("soft-positive", batch_size=6), torch.as_tensor(cache.labels[sub]), seed=3)))
    assert e.state["video"].tolist() == [int(sub[v]) for _, v in ref]
    np.testing.assert_array_equal(e.state["audio_labels"], e.state["video_labels"])
    np.testing.assert_array_equal(e.fig.axes[-1].images[0].get_array(), np.eye(6, dtype=bool))
    e.p.value = 0.0
    np.testing.assert_array_equal(e.state["video"], e.state["audio"])
    e.strategy.value = "hard-negative"
    assert len(set(e.state["audio_labels"])) == 1 and e.p.disabled
    e.strategy.value = "easy-negative"
    assert len(set(e.state["audio_labels"])) == len(e.state["audio_labels"])
    e.positives.value = "labels"
    y = e.state["strategy_labels"]
    np.testing.assert_array_equal(e.state["target"], (y[:, None] == e.state["strategy_video_labels"][None]) | np.eye(len(y), dtype=bool))
    e.batch_size.value = 3
    assert e.state["target"].shape == (3, 3)


def test_training_monitor_records_and_draws():
    m = TrainingMonitor(every=3, window=2)
    fake = SimpleNamespace(cfg=TrainConfig(), total_steps=3, cache=SimpleNamespace(classes=["a", "b", "c"]))
    for s, loss in enumerate([3.0, 2.0, 1.0], 1):
        m(fake, dict(step=s, loss=loss, lr=0.01, clips_per_s=40.0, seconds=0.25))
    assert m.fig is not None and m.progress.value == m.progress.max == 3
    np.testing.assert_allclose(m.fig.axes[0].lines[1].get_ydata(), [3.0, 2.5, 1.5])
    np.testing.assert_allclose(m.chance, [math.log(10)] * 3)
    np.testing.assert_allclose(running_mean([1, 2, 3, 4], 3), pd.Series([1, 2, 3, 4]).rolling(3, min_periods=1).mean())
    sup = SimpleNamespace(cfg=TrainConfig(sampling=SamplingSpec.preset("supervised")), cache=fake.cache)
    assert chance_level(sup, 10) == pytest.approx(math.log(3))


def _toy_results():
    rng = np.random.default_rng(0)
    rows = []
    for size in (5, 10):
        for seed in range(4):
            base = 50 + size + rng.normal(0, 3)
            rows += [("Random", size, seed, base, base - 5), ("Soft-positive", size, seed, base + 4 + rng.normal(0, 1), base - 2),
                     ("Hard-negative", size, seed, base - 10 + rng.normal(0, 2), base - 15)]
    return pd.DataFrame(rows, columns=["variant", "size", "seed", "id_linear", "ood_linear"])


def test_paired_differences_match_scipy_paired_t_interval():
    res = _toy_results()
    d = paired_differences(res, "id_linear", "Random").set_index(["variant", "size"])
    for v in ("Soft-positive", "Hard-negative"):
        for size in (5, 10):
            a = res[(res.variant == v) & (res["size"] == size)].sort_values("seed")["id_linear"].to_numpy()
            b = res[(res.variant == "Random") & (res["size"] == size)].sort_values("seed")["id_linear"].to_numpy()
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert d.loc[(v, size), "mean_diff"] == pytest.approx((a - b).mean())
            assert d.loc[(v, size), "ci_low"] == pytest.approx(ci.low) and d.loc[(v, size), "ci_high"] == pytest.approx(ci.high)


def test_replication_explorer_reads_csv_and_updates(tmp_path):
    res = _toy_results()
    res.to_csv(tmp_path / "results.csv", index=False)
    e = ReplicationExplorer(tmp_path / "results.csv")
    lines = {c.get_label(): c.lines[0].get_ydata() for c in e.fig.axes[0].containers}
    assert sorted(lines) == ["Hard-negative", "Random", "Soft-positive"]
    np.testing.assert_allclose(lines["Random"], res[res.variant == "Random"].groupby("size")["id_linear"].mean())
    e.variants.value = ("Random", "Hard-negative")
    assert len(e.fig.axes[0].containers) == 2 and e.state["diffs"]["variant"].unique().tolist() == ["Hard-negative"]
    e.baseline.value = "Hard-negative"
    assert e.state["diffs"]["variant"].unique().tolist() == ["Random"] and (e.state["diffs"]["mean_diff"] > 0).all()
    e.metric.value = "ood_linear"
    assert "ood_linear" in e.table.value
    e.sizes.value = ()
    assert e.fig.axes[0].texts[0].get_text() == "no runs selected"
    with pytest.raises(AvcError, match="not a replication results table"):
        ReplicationExplorer(pd.DataFrame(dict(variant=["Random"], size=[5], seed=[0])))
