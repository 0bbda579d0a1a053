"""Record cache and torch Datasets: reuse, invalidation, atomic build, deterministic crops/windows."""

import numpy as np
import pytest

from cpsc2018.cache import RecordCache
from cpsc2018.catalog import scan
from cpsc2018.dataset import EvalWindows, TrainWindows, cache_targets
from cpsc2018.preprocess import PreprocessConfig, preprocess


@pytest.fixture(scope="module")
def entries(data_dir):
    return scan(data_dir / "cpsc2018", progress=False).entries[:12]


def test_cache_matches_preprocess_and_is_reused(entries, tmp_path):
    from cpsc2018.catalog import load

    cfg = PreprocessConfig()
    a = RecordCache.build(entries, cfg, tmp_path, progress=False)
    assert len(a) == 12
    x = preprocess(load(entries[3]).signal, entries[3].fs, cfg)
    np.testing.assert_allclose(a.get(3), x, atol=2e-3 * np.abs(x).max())  # float16 storage
    b = RecordCache.build(entries, cfg, tmp_path, progress=False)
    assert b.folder == a.folder
    c = RecordCache.build(entries, PreprocessConfig(fs=100.0), tmp_path, progress=False)
    assert c.folder != a.folder and c.lengths[0] * 2.5 == pytest.approx(a.lengths[0], abs=1)


def test_killed_build_leaves_nothing(entries, tmp_path, monkeypatch):
    import cpsc2018.cache as cache_mod

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "preprocess", boom)
    with pytest.raises(KeyboardInterrupt):
        RecordCache.build(entries, PreprocessConfig(), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_train_windows_deterministic(entries, tmp_path):
    cache = RecordCache.build(entries, PreprocessConfig(), tmp_path, progress=False)
    y = cache_targets(cache, entries, "six")
    ds = TrainWindows(cache, y, indices=[0, 5, 7], seed=3)
    ds.set_epoch(2)
    x1, t1 = ds[1]
    x2, _ = ds[1]
    assert x1.shape == (12, 2500) and t1.tolist() == y[5].tolist()
    assert np.array_equal(x1.numpy(), x2.numpy())
    ds.set_epoch(3)
    assert not np.array_equal(ds[1][0].numpy(), x1.numpy())


def test_eval_windows_cover_records(entries, tmp_path):
    cache = RecordCache.build(entries, PreprocessConfig(), tmp_path, progress=False)
    y = cache_targets(cache, entries, "six")
    ds = EvalWindows(cache, y, indices=[0, 1], max_windows=None)
    expected = sum(int(np.ceil(max(cache.lengths[i], 2500) / 2500)) for i in (0, 1))
    assert len(ds) == expected
    x, t, j = ds[len(ds) - 1]
    assert j == 1 and x.shape == (12, 2500)
