"The robust-xID study end to end on a tiny configuration: outputs written, results reused, stale results recomputed."
import json

import numpy as np
import pandas as pd
import pytest
import torch

from avc_nb.core import ConfigError
from avc_nb.robust import (OBJECTIVES, STUDY_VERSION, RobustConfig, RobustObjective, claim_checks, clip_features, roc_auc,
                           run_robust)


def tiny(out, **kw):
    base = dict(out_dir=str(out), objectives=['InfoNCE', 'Weighted', 'AVID+CMA'], fractions=[0.0, 0.5], seeds=[0, 1],
                n_classes=3, clips_per_class=8, probe_clips_per_class=6, batch_size=8, epochs=4, hidden=16, proj_dim=8,
                pos_k=4, n_negatives_within=4, refresh_every=1, probe_epochs=5, progress=False)
    return RobustConfig(**{**base, **kw})


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny(tmp_path_factory.mktemp('robust'))
    return cfg, run_robust(cfg)


def test_outputs(study):
    cfg, res = study
    out = cfg.out_dir
    for f in ('results.csv', 'weights.json', 'tables.md', 'weights.png', 'detection.png', 'timing.json', 'robust.yaml'):
        assert (pd.io.common.Path(out) / f).exists(), f
    runs = res[res.objective != 'Inputs (no pretraining)']
    assert len(runs) == 3 * 2 * 2
    assert set(runs.objective) == {'InfoNCE', 'Weighted', 'AVID+CMA'}
    for c in ('id_linear_audio', 'ood_knn_video', 'auc_final', 'same_mass', 'cma_same'):
        assert c in res.columns, c
    assert runs[runs.offscreen == 0.5].auc_final.notna().all()          # off-screen pairs exist: an AUC
    assert runs[runs.offscreen == 0.0].auc_final.isna().all()           # none: no AUC
    assert runs[runs.objective == 'AVID+CMA'].cma_same.notna().all()    # CMA mined positives and measured them
    table = (pd.io.common.Path(out) / 'tables.md').read_text()
    assert 'Claim checks' in table and 'AVID+CMA' in table and 'Published' in table
    t = json.loads((pd.io.common.Path(out) / 'timing.json').read_text())
    assert t['runs'] == 12 and t['seconds'] > 0 and t['study_version'] == STUDY_VERSION
    # every run trained through notebook 07's Trainer: its log in the run folder, epochs x (24 clips // 8) steps
    log = pd.read_csv(pd.io.common.Path(out) / 'runs' / 'avid+cma_off0.5_s1' / 'train' / 'log.csv')
    assert log.step.tolist() == list(range(1, 4 * 3 + 1)) and (runs.steps == 4 * 3).all()
    assert not (pd.io.common.Path(out) / 'runs' / 'avid+cma_off0.5_s1' / 'train' / 'checkpoints').exists()


def test_results_reused_and_stale_recomputed(study, tmp_path):
    cfg, res = study
    again = run_robust(cfg)                                             # every run cached: identical numbers
    pd.testing.assert_frame_equal(res.reset_index(drop=True)[['objective', 'offscreen', 'seed', 'id_linear_audio']],
                                  again.reset_index(drop=True)[['objective', 'offscreen', 'seed', 'id_linear_audio']])
    path = pd.io.common.Path(cfg.out_dir) / 'runs' / 'infonce_off0_s0' / 'result.json'
    r = json.loads(path.read_text()); r['id_linear_audio'] = -1.0; r['fingerprint'] = 'stale'
    path.write_text(json.dumps(r))
    fixed = run_robust(cfg)
    v = fixed[(fixed.objective == 'InfoNCE') & (fixed.offscreen == 0) & (fixed.seed == 0)].id_linear_audio.item()
    assert v == res[(res.objective == 'InfoNCE') & (res.offscreen == 0) & (res.seed == 0)].id_linear_audio.item()


def test_offscreen_flags_reach_the_features(study):
    cfg, _ = study
    from avc_nb.data import ClipCache
    cache = ClipCache(pd.io.common.Path(cfg.out_dir) / 'data' / 'pretrain_off0.5' / 'cache')
    f = clip_features(cache, n_windows=2)
    assert f['audio'].shape[:2] == (24, 2) and f['video'].shape[:2] == (24, 2)
    off = cache.manifest.df['offscreen'].astype(str).str.lower().eq('true').to_numpy()
    assert off.sum() == 12 and (f['offscreen'] == off).all()


def test_config_errors():
    with pytest.raises(ConfigError, match='batch_size'): RobustConfig(batch_size=1000)
    with pytest.raises(ConfigError, match='cma_start'): RobustConfig(cma_start=1.0)


def test_every_objective_runs_a_step():
    g = torch.Generator().manual_seed(0)
    a, v = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g)
    for name in OBJECTIVES:
        obj = RobustObjective(name, 12, 8, pos_k=3, n_negatives_within=3, item_labels=torch.arange(12) % 3)
        loss, extra = obj(a, v, torch.arange(6), torch.arange(6) % 3, step=0, epoch=0)
        assert torch.isfinite(loss), name
        (ga,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(ga).all() and ga.abs().sum() > 0, name


def test_auc_and_claims_on_known_numbers():
    assert roc_auc(np.r_[np.zeros(5), np.ones(5)], np.r_[np.zeros(5), np.ones(5)]) == 1.0
    rows = [dict(objective=o, offscreen=f, seed=s, id_linear_audio=50 + s + (3 if o == 'AVID+CMA' else 0),
                 auc_by_epoch=[0.5], auc_final=0.5, same_mass=np.nan, chance=np.nan, cma_same=0.4, cma_chance=0.2)
            for o in ('AVID bank', 'AVID+CMA') for f in (0.0,) for s in range(3)]
    cc = claim_checks(pd.DataFrame(rows)).set_index('claim')
    assert cc.loc['AVID+CMA beats AVID, off 0 (id_linear_audio)', 'verdict'] == 'holds'


def test_through_the_trainer_with_resume(tmp_path):
    "Notebook 07's Trainer with a RobustObjective: the steps count and the bank survive a checkpoint and resume."
    torch.set_num_threads(1)
    from avc_nb.data import CacheSpec, prepare_cache
    from avc_nb.robust import robust_trainer
    from avc_nb.sampling import SamplingSpec
    from avc_nb.synthetic import make_synthetic
    from avc_nb.train import TrainConfig
    man = make_synthetic(tmp_path / 'clips', n_classes=3, clips_per_class=6, offscreen_fraction=0.5, splits=(1.0,), size=48,
                         progress=False)
    cache = prepare_cache(man, tmp_path / 'cache', CacheSpec(seconds=2.0, fps=8, size=48, sample_rate=16000), progress=False)
    def cfg(epochs):
        return TrainConfig(cache_dir=str(cache.dir), out_dir=str(tmp_path / 'run'), epochs=epochs, crop=32, n_frames=4,
                           sampling=SamplingSpec(batch_size=6, drop_last=True), progress=False)
    tr = robust_trainer(cfg(1), 'AVID+CMA', cache=cache, pos_k=3, n_negatives_within=3, cma_start=1, refresh_every=1)
    tr.fit(resume=False)
    obj = tr.loss_mods['objective']
    assert int(obj.steps) == 3 and int(obj.objective.bank.found_at) == -1       # one epoch of AVID, no CMA yet
    bank = obj.objective.bank.mem_a.clone()
    tr2 = robust_trainer(cfg(2), 'AVID+CMA', cache=cache, pos_k=3, n_negatives_within=3, cma_start=1, refresh_every=1)
    obj2 = tr2.loss_mods['objective']
    assert not torch.equal(bank, obj2.objective.bank.mem_a)                       # a fresh bank: other random entries
    tr2.load()
    assert torch.equal(bank, obj2.objective.bank.mem_a) and int(obj2.steps) == 3  # the checkpoint restores bank and count
    tr2.fit(resume=True)
    assert int(obj2.steps) == 6                                                   # counting went on from the checkpoint
    assert int(obj2.objective.bank.found_at) == 0                                 # CMA started at epoch 1
    assert len(obj2.objective.records) == 3                                       # the resumed run recorded its own steps
    assert not torch.equal(bank, obj2.objective.bank.mem_a)                       # and training moved it on
