"""The replication's trust machinery (notebook 11): fingerprinted results and data, the paired
Student-t comparison, and one-line config errors from `avc_replicate`."""
import json
import math
import sys

import pandas as pd
import pytest

from avc_nb.core import AvcError, ConfigError
from avc_nb.replicate import (ReplicateConfig, _t_quantile, check_claim, paired_comparison, paired_stats, pending_runs,
                              prepare_data, replicate, run_one, t_quantile)


def tiny(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / 'rep'), variants=['Random'], sizes=[3], seeds=[0], n_classes=3,
                test_clips_per_class=3, ood_clips_per_class=4, pseudo_clips_per_class=3, epochs=1, batch_size=6, crop=48,
                probe_epochs=3, finetune=False, workers=0, heldout=False, progress=False)
    return ReplicateConfig(**{**base, **kw})


def test_result_of_other_settings_is_recomputed(tmp_path):
    cfg = tiny(tmp_path)
    replicate(cfg)
    done = tmp_path / 'rep' / 'runs' / 'random_n3_s0' / 'result.json'
    first = json.loads(done.read_text())
    said = []
    again = run_one(cfg, prepare_data(cfg), 'Random', 3, 0, say=said.append)
    assert again == first and said == []                     # same fingerprint: reused, nothing said
    other = cfg.replace(epochs=2)
    assert pending_runs(other) == [('Random', 3, 0)]
    res = run_one(other, prepare_data(other), 'Random', 3, 0, say=said.append)
    assert len(said) == 1 and 'epochs: 1 -> 2' in said[0] and said[0].endswith('recomputing')
    assert res['fingerprint'] != first['fingerprint'] and res['steps'] > first['steps']
    assert json.loads(done.read_text())['fingerprint'] == res['fingerprint']


def test_data_of_other_settings_are_refused(tmp_path):
    cfg = tiny(tmp_path)
    prepare_data(cfg)
    with pytest.raises(AvcError, match=r'params\.variation: 2\.0 -> 1\.0'):
        prepare_data(cfg.replace(variation=1.0))
    with pytest.raises(AvcError, match=r'params\.clips_per_class: 6 -> 7'):   # a larger size: more training clips
        prepare_data(cfg.replace(sizes=[4]))
    (tmp_path / 'rep' / 'data' / 'ood' / 'fingerprint.json').unlink()        # as an earlier avc_nb left it
    with pytest.raises(AvcError, match='without a fingerprint.json'):
        prepare_data(cfg)


def test_t_quantile_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, 'scipy.stats', None)                   # `from scipy.stats import t` fails
    assert t_quantile(0.975, 4) == pytest.approx(2.7764451051977987, abs=1e-9)
    assert _t_quantile(0.975, 2) == pytest.approx(4.302652729911275, abs=1e-9)


def test_paired_interval_by_hand():
    # differences 3, 5, 4, 6, 2: mean 4, sd sqrt(2.5), se sqrt(0.5), t(0.975, 4) = 2.7764451
    h = paired_stats([3, 5, 4, 6, 2])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (h['ci_low'], h['ci_high']) == (pytest.approx(4 - half), pytest.approx(4 + half))
    assert (h['wins'], h['losses'], h['ties'], h['verdict']) == (5, 0, 0, 'better')
    rnd = [40.0, 42.0, 38.0, 41.0, 39.0]
    res = pd.DataFrame(dict(variant=['Random'] * 5 + ['Soft-positive'] * 5, size=[8] * 10, seed=list(range(5)) * 2,
                            id_linear=rnd + [r + d for r, d in zip(rnd, [3, 5, 4, 6, 2])]))
    row = paired_comparison(res).iloc[0]
    assert row['ci_low'] == pytest.approx(4 - half) and check_claim(res)['holds']


@pytest.mark.parametrize('setting, field', [('n_classes=0', 'n_classes'), ('seeds=[]', 'seeds'), ('epochs=0', 'epochs'),
                                            ('heldout_classes=10', 'heldout_classes')])
def test_cli_bad_value_is_one_line(setting, field, capsys):
    from avc_nb.cli import avc_replicate_cli
    with pytest.raises(SystemExit):
        avc_replicate_cli(['--quick', '--out', '/nonexistent/never-written', '--set', setting])
    err = capsys.readouterr().err.strip()
    assert err.startswith('avc_replicate: ') and f"ReplicateConfig.{field} " in err and '\n' not in err
    with pytest.raises(ConfigError): ReplicateConfig(**{field: {'n_classes': 0, 'seeds': [], 'epochs': 0, 'heldout_classes': 10}[field]})


def test_saved_result_reuses_only_a_whole_matching_file(tmp_path):
    "A run's result.json is reused only when complete and of the same fingerprint; a half-written one means 'run again', not a crash."
    from avc_nb.replicate import save_result, saved_result
    run = tmp_path / 'runs' / 'x_s0'
    assert saved_result(run, 'abc') is None                              # never run
    save_result(run, dict(fingerprint='abc', top1=50.0))
    assert saved_result(run, 'abc') == dict(fingerprint='abc', top1=50.0)
    assert saved_result(run, 'other') is None                            # other settings
    assert not (run / 'result.json.tmp').exists()
    (run / 'result.json').write_text('{"fingerprint": "abc", "top')     # a run killed while writing it
    assert saved_result(run, 'abc') is None
