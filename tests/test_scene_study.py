"Library-level checks of avc_nb.scene_study (notebook 16 holds the lesson and the measured study)."
import json

import numpy as np
import pandas as pd
import pytest
import torch

from avc_nb.core import AvcError, ConfigError
from avc_nb.scene_study import (COMPLEXITY_CONDITIONS, SceneStudyConfig, _loss_target, _steps_to, smoothed, claim_checks, condition_subset,
                                dmc_table, eval_set, load_scene_study, localization_scores, paired, run_scene_study, scene_data,
                                study_tables)


def test_config_checks():
    with pytest.raises(ConfigError, match='seeds'): SceneStudyConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match='steps'): SceneStudyConfig(steps=0)
    assert SceneStudyConfig.from_dict(SceneStudyConfig.quick().to_dict()) == SceneStudyConfig.quick()


def test_paired_and_target():
    rows = pd.DataFrame(dict(condition=['A'] * 3 + ['B'] * 3, seed=[0, 1, 2] * 2, m=[1., 2., 3., 0., 1., 2.5]))
    r = paired(rows, 'm', 'A', ['B']).iloc[0]
    assert r['mean_diff'] == pytest.approx(-0.5 / 3 - 2 / 3) and (r['wins'], r['losses']) == (0, 3)
    runs = [smoothed([4., 1.], 1), smoothed([4., 2.], 1)]
    assert _loss_target(runs) == 2.0 and [_steps_to(x, 2.0) for x in runs] == [2, 2]


def test_localization_scores_skip_empty_masks():
    G = np.zeros((8, 8)); G[:4] = 1
    s = localization_scores([G, np.random.default_rng(0).uniform(size=(2, 2))], [G, np.zeros((8, 8))])
    assert s['n_eval'] == 1 and s['ciou'] == pytest.approx(1.0)
    with pytest.raises(AvcError): localization_scores([G], [np.zeros((8, 8))])


def test_tiny_study_end_to_end(tmp_path):
    "Two seeds x 3 steps on a tiny set: every condition and baseline present, tables, claims and the saved study."
    cfg = SceneStudyConfig(out_dir=str(tmp_path), seeds=[0, 1], n_classes=3, clips_per_class=6, steps=3, eval_every=1, batch_size=4)
    cache, df = scene_data(cfg)
    subs = [condition_subset(df, cache.indices('train'), c)[0] for c in COMPLEXITY_CONDITIONS]
    assert len({len(s) for s in subs}) == 1 and [set(df.n_sources.iloc[s]) for s in subs] == [{1}, {2}, {3}]
    ev = eval_set(cache, df)
    assert (ev['n_sources'] >= 2).all() and ev['audio'].shape[0] == len(ev['masks'])
    study = run_scene_study(cfg, log=None)
    assert len(study['runs']) == 12 and len(study['baselines']) == 6
    assert all([c['step'] for c in r['curve']] == [0, 1, 2, 3] for r in study['runs'])
    t = study_tables(study)
    assert set(t['rows'].condition) >= {'1 source', 'shuffled', 'centre prior', 'random map', 'untrained model'}
    assert t['rows'].loc[t['rows'].condition.isin(['simple-first', 'shuffled', 'complex-first']), 'steps_to_target'].notna().all()
    assert len(claim_checks(t)) == 9 and len(dmc_table(t)) > 4
    assert load_scene_study(tmp_path)['config'] == cfg.to_dict()


def test_distractors_reach_the_data(tmp_path):
    "max_distractors goes to the generator: silent objects in the manifest, counted by scene_complexity, not in the masks."
    from avc_nb.scenes import scene_complexity
    cfg = SceneStudyConfig(out_dir=str(tmp_path), n_classes=5, clips_per_class=4, max_distractors=1)
    cache, df = scene_data(cfg)
    assert set(df.n_distractors) <= {0, 1} and df.n_distractors.sum() > 0
    np.testing.assert_array_equal(scene_complexity(df), df.n_sources + df.n_distractors)
    with pytest.raises(AvcError, match='other settings'): scene_data(SceneStudyConfig(out_dir=str(tmp_path), n_classes=5, clips_per_class=4))
