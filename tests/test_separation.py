"Library-level checks of the learned separator and the similarity-map baseline in avc_nb.localize (notebook 10 holds the lesson and the measurements)."
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from avc_nb.localize import (MixSeparateObjective, SeparatorModel, av_similarity_map, boxes_mask, ciou, evaluate_separation,
                             log_frequency_matrix, mix_partner, separate, separation_pairs, separation_table, train_separator)

pytest.importorskip('mir_eval')


@pytest.fixture(scope='module')
def solo_cache(tmp_path_factory):
    "3 classes x 4 one-sound clips of the built-in generator (9 train, 3 test), cached."
    from avc_nb.data import CacheSpec, prepare_cache
    from avc_nb.synthetic import make_synthetic
    root = tmp_path_factory.mktemp('solo')
    man = make_synthetic(root / 'data', n_classes=3, clips_per_class=4, max_sources=1, seed=0, progress=False)
    return prepare_cache(man, root / 'cache', CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)


def _batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(B, 16000, generator=g) * 3000).to(torch.int16),
            torch.randint(0, 256, (B, 8, 64, 64, 3), dtype=torch.uint8, generator=g))


# -- the model and the objective --------------------------------------------------------------

def test_partner_and_shapes():
    assert mix_partner(4).tolist() == [2, 3, 0, 1] and mix_partner(5).tolist() == [2, 3, 4, 0, 1]
    assert mix_partner(4, shift=1).tolist() == [1, 2, 3, 0]
    with pytest.raises(ValueError, match='itself'): mix_partner(4, shift=8)
    with pytest.raises(ValueError, match='2 clips'): mix_partner(1)
    torch.manual_seed(0)
    m = SeparatorModel().eval()
    wav, fr = _batch()
    o = m(wav, fr)
    assert o.logits.shape == o.masks.shape == o.targets.shape == o.weights.shape == (4, 128, 63)
    torch.testing.assert_close(o.weights[0], o.weights[2])                  # clips 0 and 2 share one mixture
    # the targets are |S_i| > 0.5 |mix| of the clip and its partner, each at half level
    src = wav.float() / 32768 / 2
    M, S = m.magnitude(src + src[[2, 3, 0, 1]]), m.magnitude(src)
    torch.testing.assert_close(o.targets, (S > 0.5 * M).float())
    with pytest.raises(ValueError, match='frames'): m(wav, fr[:, 0])


def test_log_frequency_round_trip():
    W, Wi = log_frequency_matrix(512, 128), log_frequency_matrix(512, 128, inverse=True)
    torch.testing.assert_close(W.sum(1), torch.ones(128)); torch.testing.assert_close(Wi.sum(1), torch.ones(512))
    x = 0.5 + 0.5 * torch.cos(torch.linspace(0, 3, 512))
    assert (Wi @ (W @ x) - x).abs().max() < 1e-3
    with pytest.raises(ValueError, match='base'): log_frequency_matrix(512, 128, base=1.0)


def test_objective_hand_cases():
    "Perfect masks: loss at the BCE floor (near 0); inverted: about 20 x the mean weight; same-class mixtures left out."
    torch.manual_seed(0)
    with torch.no_grad(): o = SeparatorModel().eval()(*_batch())
    obj, lab = MixSeparateObjective(), {'label': torch.tensor([0, 1, 2, 3])}
    wm = float(o.weights.mean())
    perfect = o._replace(logits=20 * (2 * o.targets - 1))
    lp, mp = obj(perfect, lab)
    li, mi = obj(o._replace(logits=-perfect.logits), lab)
    assert float(lp) < 1e-6 and mp['mask_acc'] == 1.0 and mi['mask_acc'] == 0.0
    assert float(li) == pytest.approx(20 * wm, rel=0.05) and float(li) > 1e6 * float(lp)
    l0, _ = obj(o._replace(logits=torch.zeros_like(o.logits)), lab)
    assert float(l0) == pytest.approx(math.log(2) * wm, rel=1e-4)
    # mixtures 0+2 and 1+3; labels make 0 and 2 the same class: only the mixture 1+3 (twice) counts
    ls, ms = obj(o, {'label': torch.tensor([7, 1, 7, 3])})
    assert ms['mixtures'] == 2
    per = torch.nn.functional.binary_cross_entropy_with_logits(o.logits, o.targets, weight=o.weights, reduction='none').mean((1, 2))
    assert float(ls) == pytest.approx(float(per[[1, 3]].mean()), rel=1e-5)
    lu, mu = obj(o, {'label': torch.tensor([-1, -1, -1, -1])})          # unlabelled clips are never "the same class"
    assert mu['mixtures'] == 4
    assert obj(o, {'label': torch.tensor([5, 6, 5, 6])})[1]['mixtures'] == 0
    assert MixSeparateObjective(skip_same_class=False)(o, {'label': torch.tensor([5, 6, 5, 6])})[1]['mixtures'] == 4


def test_gradients_reach_both_networks():
    torch.manual_seed(0)
    m = SeparatorModel().train()
    loss, _ = MixSeparateObjective()(m(*_batch()), {'label': torch.arange(4)})
    loss.backward()
    for name in ('visual.stem.0.weight', 'visual_fc.weight', 'audio_net.stem.0.weight', 'audio_net.head.weight', 'scale', 'bias'):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_separate_with_an_all_pass_mask_returns_the_mixture(solo_cache):
    torch.manual_seed(0)
    m = SeparatorModel().eval()
    with torch.no_grad(): m.scale.zero_(); m.bias.fill_(30.0)                  # every mask is 1
    b = solo_cache.batch([0, 1], n_frames=8, audio_samples=16000)
    mix = b['audio'].astype(np.float64).mean(0) / 32768
    est = separate(m, mix, b['frames'])
    assert est.shape == (2, 16000)
    np.testing.assert_allclose(est, np.stack([mix, mix]), atol=1e-6)
    with torch.no_grad(): m.bias.fill_(-30.0)                                  # every mask is 0: silence
    assert np.abs(separate(m, mix, b['frames'])).max() < 1e-9


# -- training through the Trainer --------------------------------------------------------------

def test_training_lowers_the_loss_and_resumes_exactly(solo_cache, tmp_path):
    from avc_nb.train import load_model
    train = solo_cache.indices('train')
    b = solo_cache.batch(train[:8], n_frames=8, audio_samples=16000)
    batch = {'label': torch.as_tensor(solo_cache.labels[train[:8]])}
    obj = MixSeparateObjective()
    def fixed_loss(model):   # on a copy in training mode (batch statistics), so the model's own BatchNorm buffers stay as trained
        with torch.no_grad():
            return float(obj(copy.deepcopy(model).train()(torch.as_tensor(b['audio']), torch.as_tensor(b['frames'])), batch)[0])
    torch.manual_seed(0)
    before = fixed_loss(SeparatorModel())
    full = train_separator(solo_cache, train, steps=12, seed=0, out_dir=tmp_path / 'full', batch_size=4, resume=False, return_trainer=True)
    assert full.step == 12 and all(np.isfinite(h['loss']) and 'mask_acc' in h for h in full.history)
    assert not full.model.training
    after = fixed_loss(full.model)
    assert after < 0.97 * before, (before, after)              # measured: 0.305 -> 0.282
    # 6 steps, then the same run continued to 12: the same losses as the 12-step run
    train_separator(solo_cache, train, steps=6, seed=0, out_dir=tmp_path / 'part', batch_size=4, resume=False)
    part = train_separator(solo_cache, train, steps=12, seed=0, out_dir=tmp_path / 'part', batch_size=4, return_trainer=True)
    assert len(part.history) == 12
    np.testing.assert_allclose([h['loss'] for h in part.history], [h['loss'] for h in full.history], rtol=0, atol=1e-5)
    model, cfg = load_model(full.ckpt_path)
    assert isinstance(model, SeparatorModel) and cfg.max_steps == 12 and not model.training
    for k, v in full.model.state_dict().items(): torch.testing.assert_close(model.state_dict()[k], v.cpu())
    with pytest.raises(Exception, match='different config'):
        train_separator(solo_cache, train, steps=14, seed=0, out_dir=tmp_path / 'part', batch_size=6)


# -- evaluation ---------------------------------------------------------------------------------

def test_pairs_are_of_different_classes(solo_cache):
    df = solo_cache.manifest.df.reset_index(drop=True)
    pairs = separation_pairs(solo_cache, 'test')
    test = set(solo_cache.indices('test').tolist())
    assert pairs and all(i in test and j in test and df.label[i] != df.label[j] for i, j in pairs)
    assert separation_pairs(solo_cache, 'test', n_pairs=1, seed=0) == pairs[:1]
    allp = separation_pairs(solo_cache, indices=np.arange(len(df)))
    n_same = sum(1 for a in range(len(df)) for c in range(a + 1, len(df)) if df.label[a] == df.label[c])
    assert len(allp) == len(df) * (len(df) - 1) // 2 - n_same


def test_evaluate_separation_floor_ceilings_and_silent_samples(solo_cache, tmp_path):
    "The floor is near 0 dB, the ideal masks far above it; a mixture with a silent clip is skipped and counted in every method."
    from avc_nb.data import CacheSpec, Manifest, prepare_cache, write_clip
    torch.manual_seed(0)
    m = SeparatorModel().eval()
    pairs = separation_pairs(solo_cache, 'test')
    r = evaluate_separation(m, solo_cache, pairs)
    t = separation_table(r)
    assert list(t.index) == ['learned', 'mixture', 'ideal binary mask', 'ideal ratio mask']
    assert (t['n'] + t['skipped'] == len(pairs)).all()
    assert abs(r['mixture']['sdr']) < 3 and r['ideal binary mask']['sdr'] > r['mixture']['sdr'] + 10
    assert all(len(v['per_sample']['sdr']) == len(pairs) for v in r.values())
    assert set(evaluate_separation(m, solo_cache, pairs[:1], ceilings=False)) == {'learned', 'mixture'}
    # two clips, one silent
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    rows = []
    for n, a in enumerate([tone, np.zeros_like(tone)]):
        p = write_clip(tmp_path / f'c{n}.mp4', np.full((16, 64, 64, 3), 60 * n, np.uint8), a, fps=8, sample_rate=16000)
        rows.append(dict(clip_id=f'c{n}', video_path=str(p), audio_path=str(p), label=f'k{n}', split='test', start=0.0, duration=2.0))
    tiny = prepare_cache(Manifest(pd.DataFrame(rows)), tmp_path / 'cache', CacheSpec(seconds=2.0, fps=8, size=64), workers=0, progress=False)
    s = evaluate_separation(m, tiny, separation_pairs(tiny))
    assert {k: (v['n'], v['skipped']) for k, v in s.items()} == {k: (0, 1) for k in s}
    assert all(np.isnan(v['sdr']) and np.isnan(v['per_sample']['sdr']).all() for v in s.values())
    with pytest.raises(ValueError, match='no pairs'): evaluate_separation(m, tiny, [])


# -- the similarity-map baseline ---------------------------------------------------------------

def test_av_similarity_map_shapes_on_a_real_model():
    from avc_nb.encoders import build_av_model
    torch.manual_seed(0)
    model = build_av_model(small=True).train()
    wav, fr = _batch(3)
    s = av_similarity_map(model, wav, fr)
    assert s.shape == (3, 2, 2) and (s.abs() <= 1 + 1e-6).all()
    assert model.training                                                   # the caller's mode is kept
    assert av_similarity_map(model, wav, fr, resize=128).shape == (3, 4, 4)
    # a linear head applied per position: position (r, c) is the cosine of head(feature) with the audio embedding
    model.eval()
    with torch.no_grad():
        f = model.video.feature_maps(model.video_input(fr))['conv5x'].mean(2)[:, :, 1, 0]
        want = torch.nn.functional.cosine_similarity(model.video_head(f), model.encode_audio(wav), dim=-1)
    torch.testing.assert_close(s[:, 1, 0], want, atol=1e-5, rtol=1e-5)
    nohead = build_av_model(small=True, head=None)
    assert av_similarity_map(nohead, wav[:1], fr[:1]).shape == (1, 2, 2)


def test_av_similarity_map_hand_case_and_ciou():
    "A video map equal to e everywhere but at (2, 0), where it is the audio's vector u: similarity 1 there, cos(u, e) elsewhere."
    from avc_nb.encoders import build_av_model
    toy = build_av_model(small=True, head=None)
    u, e = torch.tensor([1.0, 2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    fake = torch.zeros(2, 4, 1, 3, 3) + e[None, :, None, None, None]
    fake[:, :, 0, 2, 0] = u
    toy.video.feature_maps = lambda x: {'conv5x': fake[:len(x)]}
    toy.encode_audio = lambda wave, head=True: u.expand(len(wave), -1)
    s = av_similarity_map(toy, torch.zeros(2, 16000, dtype=torch.int16), torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8))
    want = torch.full((3, 3), 2 / (math.sqrt(6) * math.sqrt(2))); want[2, 0] = 1.0
    torch.testing.assert_close(s[0], want, atol=1e-6, rtol=0)
    hit, miss = boxes_mask([[0, 43, 21, 64]], 64, 64), boxes_mask([[43, 0, 64, 21]], 64, 64)
    assert ciou(s[0].numpy(), hit) > 0.3 and ciou(s[0].numpy(), miss) == 0.0
    toy.encode_audio = lambda wave, head=True: torch.ones(len(wave), 5)
    with pytest.raises(ValueError, match='head=True'): av_similarity_map(toy, torch.zeros(1, 16000), torch.zeros(1, 8, 64, 64, 3))


def test_frame_encoder_from_a_scene_model_stays_frozen(solo_cache, tmp_path):
    "visual_init copies a SceneModel's frame encoder; freeze_visual keeps its weights and BatchNorm statistics through training and reloading."
    from avc_nb.scenes import SceneModel
    from avc_nb.train import load_model
    torch.manual_seed(1)
    scene = SceneModel('small')
    tr = train_separator(solo_cache, solo_cache.indices('train'), steps=3, seed=0, out_dir=tmp_path / 'frozen', batch_size=4,
                         visual_init=scene.visual, freeze_visual=True, return_trainer=True)
    for k, v in scene.visual.state_dict().items(): torch.testing.assert_close(tr.model.visual.state_dict()[k], v)
    assert tr.model.train().visual.training is False and tr.model.audio_net.training
    model, _ = load_model(tr.ckpt_path)
    assert model.freeze_visual and not any(p.requires_grad for p in model.visual.parameters())
    torch.testing.assert_close(model.visual.stem[0].weight, scene.visual.stem[0].weight)
    with pytest.raises(ValueError, match='visual_init'):
        train_separator(solo_cache, solo_cache.indices('train'), steps=1, seed=0, out_dir=tmp_path / 'bad', batch_size=4,
                        visual_init=SceneModel('paper').visual)


def test_swapped_frames_control(solo_cache):
    "swap_frames gives each clip's mask the other clip's frames: the estimates swap places, so the learned scores change (and an all-pass mask does not care)."
    torch.manual_seed(0)
    m = SeparatorModel().eval()
    pairs = separation_pairs(solo_cache, 'test')[:2]
    a, b = (evaluate_separation(m, solo_cache, pairs, ceilings=False, swap_frames=s)['learned'] for s in (False, True))
    with torch.no_grad(): m.scale.zero_(); m.bias.fill_(30.0)
    c, d = (evaluate_separation(m, solo_cache, pairs, ceilings=False, swap_frames=s)['learned'] for s in (False, True))
    np.testing.assert_allclose(c['per_sample']['sdr'], d['per_sample']['sdr'])
    assert not np.allclose(a['per_sample']['sdr'], b['per_sample']['sdr'])
