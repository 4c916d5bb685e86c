"Library-level checks of avc_nb.scenes and avc_nb.localize (the notebooks 09 and 10 hold the full lessons and tests)."
import math

import numpy as np
import pytest
import torch

from avc_nb.scenes import ConcurrencyLoss, CurriculumSampler, SceneModel, SceneOutput, SoftCluster, spearman
from avc_nb.localize import binarize, boxes_mask, ciou, localization_auc, localization_map, mix_sources, separation_metrics


def _loop_cluster(u, K, iters=4, beta=-30.0):
    N = len(u)
    o = [u[int(N / K) * k].clone() for k in range(K)]
    for _ in range(iters):
        b = [[math.sqrt(max(float(o[k] @ o[k] - 2 * o[k] @ u[n] + u[n] @ u[n]), 1e-10)) for n in range(N)] for k in range(K)]
        c = [[math.exp(beta * b[k][n]) / sum(math.exp(beta * b[j][n]) for j in range(K)) for n in range(N)] for k in range(K)]
        o = [sum(c[k][n] * u[n] for n in range(N)) / sum(c[k]) for k in range(K)]
    return torch.stack(o), torch.tensor(c, dtype=u.dtype)


@pytest.mark.parametrize("K", [1, 3])
def test_soft_cluster_matches_loop(K):
    u = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(K), dtype=torch.float64) * 0.3
    o, c = SoftCluster(K)(u)
    for b in range(2):
        ro, rc = _loop_cluster(u[b], K)
        torch.testing.assert_close(o[b], ro); torch.testing.assert_close(c[b], rc)


def test_concurrency_known_value_and_scene_model_shapes():
    vc = torch.tensor([[[0., 0.], [3., 4.]], [[10., 0.], [0., 10.]]]); ac = torch.tensor([[[3., 4.]], [[10., 1.]]])
    loss, met = ConcurrencyLoss()(SceneOutput(vc, None, ac, None, (1, 2), (1, 1)), {})
    assert abs(loss.item() - 0.125) < 1e-6 and met['pair_acc'] == 1.0
    m = SceneModel('small', n_visual_clusters=3, n_audio_clusters=2).eval()
    with torch.no_grad():
        out = m((torch.randn(2, 16000) * 1000).to(torch.int16), torch.randint(0, 255, (2, 8, 64, 64, 3), dtype=torch.uint8))
    assert out.visual_shape == (8, 8) and out.visual_assign.shape == (2, 3, 64) and out.audio_centres.shape == (2, 2, 128)
    assert localization_map(out).shape == (2, 8, 8)


def test_curriculum_pools_and_resume():
    comp = np.array([1, 2, 3] * 4)
    s = CurriculumSampler(comp, 2, seed=1)
    assert [sorted(set(comp[s.pool(e)])) for e in range(3)] == [[1], [1, 2], [1, 2, 3]]
    s.set_epoch(1); full = [b.tolist() for _, b in s.iter_steps()]
    s2 = CurriculumSampler(comp, 2, seed=1); s2.set_epoch(1); it = s2.iter_steps(); next(it)
    s3 = CurriculumSampler(comp, 2, seed=1); s3.load_state_dict(s2.state_dict())
    assert [b.tolist() for _, b in s3.iter_steps()] == full[1:]
    assert len(CurriculumSampler(comp, 2, order='complex-first').global_batches()) == 6
    assert spearman([1, 2, 3], [2, 4, 9]) == pytest.approx(1.0)


def test_ciou_and_auc_known_values():
    G = np.zeros((4, 4)); G[:, 2:] = 1
    ramp = np.tile(np.arange(4.0), (4, 1))
    assert ciou(ramp, G) == 0.5 and ciou(G, G) == 1.0 and ciou(ramp, G, threshold=0.5) == 1.0
    assert binarize(ramp, (4, 4)).sum() == 4
    assert boxes_mask([[0, 0, 2, 2]], 4, 4).sum() == 4
    assert localization_auc([1.0]) == pytest.approx(1.0) and localization_auc([0.0]) == pytest.approx(0.025)


def test_separation_metrics_floor_and_skip():
    pytest.importorskip('mir_eval')
    t = np.arange(8000) / 16000
    mix, refs = mix_sources(0.1 * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 2000 * t)]))
    r = separation_metrics([refs, refs], [refs + 1e-4 * np.random.default_rng(0).normal(size=refs.shape), np.stack([mix, np.zeros_like(mix)])])
    assert r['n'] == 1 and r['skipped'] == 1 and r['sdr'] > 30


def _scene_run(tmp_path, name, epochs, cache):
    from avc_nb.sampling import SamplingSpec
    from avc_nb.scenes import scene_complexity
    from avc_nb.train import TrainConfig, Trainer
    cfg = TrainConfig(cache_dir=str(cache.dir), out_dir=str(tmp_path / name), epochs=epochs, lr=1e-3, crop=0, n_frames=4,
                      audio_seconds=1.0, audio_offset=0.0, sampling=SamplingSpec(batch_size=6), progress=False, prefetch=0)
    torch.manual_seed(0)
    sub = cache.indices('train')
    comp = scene_complexity(cache.manifest.df.reset_index(drop=True).iloc[sub])
    return Trainer(cfg, model=SceneModel('small', n_visual_clusters=3, n_audio_clusters=2), objective=ConcurrencyLoss(),
                   sampler=CurriculumSampler(comp, batch_size=6, seed=0))


def test_scene_model_trains_through_trainer_and_resumes_exactly(tmp_path):
    "SceneModel + ConcurrencyLoss + CurriculumSampler in the one Trainer: band statistics filled, exact resume, rebuilt by load_model."
    from avc_nb.data import CacheSpec, prepare_cache
    from avc_nb.synthetic import make_synthetic
    from avc_nb.train import ConfigMismatch, Trainer, load_model
    man = make_synthetic(tmp_path / 'data', n_classes=3, clips_per_class=8, max_sources=3, seed=0, progress=False)
    cache = prepare_cache(man, tmp_path / 'cache', CacheSpec(seconds=2.0, fps=4, size=64), workers=0, progress=False)
    full_t = _scene_run(tmp_path, 'full', 3, cache)
    assert float(full_t.model.band_norm.std.mean()) != 1.0           # per-band statistics of the training clips
    full = full_t.fit(resume=False)
    assert len(full) == 3 * full_t.steps_per_epoch and all(np.isfinite(r['loss']) and 'pair_acc' in r for r in full)
    _scene_run(tmp_path, 'part', 1, cache).fit(resume=False)
    part = _scene_run(tmp_path, 'part', 3, cache).fit()
    np.testing.assert_allclose([r['loss'] for r in part], [r['loss'] for r in full], rtol=0, atol=1e-5)
    model, _ = load_model(full_t.ckpt_path)
    assert isinstance(model, SceneModel)
    for k, v in full_t.model.state_dict().items(): torch.testing.assert_close(model.state_dict()[k], v.cpu())
    other = _scene_run(tmp_path, 'part', 4, cache)                   # the same folder with other clips is refused
    other.subset = other.subset[:-1]
    with pytest.raises(ConfigMismatch, match='other clips'): other.load()
