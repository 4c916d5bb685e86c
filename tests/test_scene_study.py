"Library-level checks of avc_nb.scene_study (notebook 16 holds the lesson and the measured study)."
import json

import numpy as np
import pandas as pd
import pytest
import torch

from avc_nb.core import AvcError, ConfigError
from avc_nb.scene_study import (AV_BASELINE, COMPLEXITY_CONDITIONS, SEPARATION_METHODS, UNMATCHED, SceneStudyConfig, _loss_target,
                                _steps_to, background_probe, claim_checks, condition_subset, dmc_table, eval_set, load_scene_study,
                                localization_scores, other_map, paired, run_scene_study, scene_data, scene_map,
                                smoothed, study_tables, write_scene_report)


def test_config_checks():
    with pytest.raises(ConfigError, match='seeds'): SceneStudyConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match='steps'): SceneStudyConfig(steps=0)
    with pytest.raises(ConfigError, match='separation'): SceneStudyConfig(separation='always')
    with pytest.raises(ConfigError, match='context_strength'): SceneStudyConfig(context_strength=2)
    with pytest.raises(ConfigError, match='separation_visual'): SceneStudyConfig(separation_visual='borrowed')
    assert SceneStudyConfig.full().separation_visual == 'scene' and SceneStudyConfig.quick().separation_visual == 'own'
    assert SceneStudyConfig.from_dict(SceneStudyConfig.quick().to_dict()) == SceneStudyConfig.quick()
    d = SceneStudyConfig()
    assert (d.context_strength, d.n_visual_clusters, d.n_audio_clusters) == (0.0, 2, 1)   # the study's default data and model


def test_paired_and_target():
    rows = pd.DataFrame(dict(condition=['A'] * 3 + ['B'] * 3, seed=[0, 1, 2] * 2, m=[1., 2., 3., 0., 1., 2.5]))
    r = paired(rows, 'm', 'A', ['B']).iloc[0]
    assert r['mean_diff'] == pytest.approx(-0.5 / 3 - 2 / 3) and (r['wins'], r['losses']) == (0, 3)
    assert paired(rows, 'absent', 'A', ['B']).iloc[0]['n'] == 0          # a metric nobody measured: no seeds, no verdict
    runs = [smoothed([4., 1.], 1), smoothed([4., 2.], 1)]
    assert _loss_target(runs) == 2.0 and [_steps_to(x, 2.0) for x in runs] == [2, 2]


def test_localization_scores_skip_empty_masks():
    G = np.zeros((8, 8)); G[:4] = 1
    s = localization_scores([G, np.random.default_rng(0).uniform(size=(2, 2))], [G, np.zeros((8, 8))])
    assert s['n_eval'] == 1 and s['ciou'] == pytest.approx(1.0)
    with pytest.raises(AvcError): localization_scores([G], [np.zeros((8, 8))])


def test_other_map_is_the_unmatched_cluster():
    "K_v = 2, K_a = 1: the matched map and the unmatched map are the two clusters' assignments, clip by clip."
    from avc_nb.scenes import SceneOutput
    g = torch.Generator().manual_seed(0)
    va = torch.softmax(torch.randn(3, 2, 4, generator=g), 1)
    vc = torch.tensor([[[0., 0.], [9., 9.]]] * 3)
    ac = torch.tensor([[[1., 1.]], [[8., 8.]], [[0., 1.]]])               # matched: cluster 0, 1, 0
    out = SceneOutput(vc, va, ac, None, (2, 2), (1, 1))
    m, o = scene_map(out).flatten(1), other_map(out).flatten(1)
    for i, k in enumerate([0, 1, 0]):
        torch.testing.assert_close(m[i], va[i, k]); torch.testing.assert_close(o[i], va[i, 1 - k])


def test_background_carries_no_sound_in_the_default_data(tmp_path):
    "The study's data (context_strength 0): the background colour predicts neither the audio's context nor the class; with the built-in context (1) it predicts the audio's context."
    p1 = background_probe(*scene_data(SceneStudyConfig(out_dir=str(tmp_path / 'c1'), n_classes=3, clips_per_class=10, context_strength=1.0)))
    p0 = background_probe(*scene_data(SceneStudyConfig(out_dir=str(tmp_path / 'c0'), n_classes=3, clips_per_class=10)))
    assert p1['context_acc'] >= 0.8 and p1['context_acc'] > p1['context_chance'] + 0.3
    assert p0['colour_spread'] == 0.0
    assert p0['context_acc'] <= p0['context_chance'] and p0['class_acc'] <= p0['class_chance']


def test_tiny_study_end_to_end(tmp_path):
    "Two seeds x 3 steps on a tiny set: every condition and baseline present, separators, tables, claims, report, and the saved study."
    cfg = SceneStudyConfig(out_dir=str(tmp_path), seeds=[0, 1], n_classes=6, clips_per_class=5, steps=3, eval_every=1, batch_size=4,
                           separation_pairs=2, separation_steps=2)
    cache, df = scene_data(cfg)
    subs = [condition_subset(df, cache.indices('train'), c)[0] for c in COMPLEXITY_CONDITIONS]
    assert len({len(s) for s in subs}) == 1 and [set(df.n_sources.iloc[s]) for s in subs] == [{1}, {2}, {3}]
    ev = eval_set(cache, df)
    assert (ev['n_sources'] >= 2).all() and ev['audio'].shape[0] == len(ev['masks'])
    lines = []
    study = run_scene_study(cfg, log=lines.append)
    assert len(study['runs']) == 12 and len(study['baselines']) == 8
    assert sum(l.startswith('-- after seed') for l in lines) == 2          # the table is printed as it fills
    assert all([c['step'] for c in r['curve']] == [0, 1, 2, 3] for r in study['runs'])
    assert {b['condition'] for b in study['baselines']} == {'centre prior', 'random map', 'untrained model', AV_BASELINE}
    t = study_tables(study)
    assert set(t['rows'].condition) >= {'1 source', 'shuffled', 'centre prior', 'random map', 'untrained model', UNMATCHED}
    assert t['rows'].loc[t['rows'].condition.isin(['simple-first', 'shuffled', 'complex-first']), 'steps_to_target'].notna().all()
    claims = claim_checks(t)
    assert sum(c.startswith('(a)') for c in claims) == 3 and sum(c.startswith('(b)') for c in claims) == 3
    assert len(study['separation']) == 2 and set(study['separation_bounds']) == set(SEPARATION_METHODS)
    assert sum(c.startswith('(d)') for c in claims) == 2
    assert set(t['separation'].reference) == {'mixture (floor)', 'ideal binary mask', 'ideal ratio mask'}
    assert len(dmc_table(t)) > 4
    text = write_scene_report(study, tmp_path / 'report')
    assert 'Claim checks' in text and (tmp_path / 'report' / 'figure.png').stat().st_size > 0
    assert load_scene_study(tmp_path)['config'] == cfg.to_dict()
    # a separator on a condition's own trained frame encoder, frozen
    import dataclasses
    from avc_nb.scene_study import run_separation
    from avc_nb.train import load_model
    sc = dataclasses.replace(cfg, separation_visual='scene')
    s = run_separation(sc, cache, df, '3 sources', 0, [tuple(p) for p in study['separation_pairs']])
    assert s['visual'] == 'scene' and s['learned']['n'] + s['learned']['skipped'] == len(study['separation_pairs'])
    sep_model = load_model(tmp_path / 'runs' / 'separator-3-sources_s0' / 'train' / 'checkpoints' / 'last.pt')[0]
    scene_model = load_model(tmp_path / 'runs' / '3-sources_s0' / 'checkpoints' / 'last.pt')[0]
    for k, v in scene_model.visual.state_dict().items(): torch.testing.assert_close(sep_model.visual.state_dict()[k], v)


def test_distractors_reach_the_data(tmp_path):
    "max_distractors goes to the generator: silent objects in the manifest, counted by scene_complexity, not in the masks."
    from avc_nb.scenes import scene_complexity
    cfg = SceneStudyConfig(out_dir=str(tmp_path), n_classes=5, clips_per_class=4, max_distractors=1)
    cache, df = scene_data(cfg)
    assert set(df.n_distractors) <= {0, 1} and df.n_distractors.sum() > 0
    np.testing.assert_array_equal(scene_complexity(df), df.n_sources + df.n_distractors)
    with pytest.raises(AvcError, match='other settings'): scene_data(SceneStudyConfig(out_dir=str(tmp_path), n_classes=5, clips_per_class=4))
