import numpy as np
import pytest
import scipy.stats

from pafukv_jax.salience.ranking import recall_at_budget, spearman


def test_recall_at_budget_against_sets():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(5, 40)), rng.normal(size=(5, 40))
  for k in (1, 7, 20, 40):
    got = np.asarray(recall_at_budget(pred, target, k))
    want = [len(set(np.argsort(-p)[:k]) & set(np.argsort(-t)[:k])) / k for p, t in zip(pred, target)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
  assert np.all(np.asarray(recall_at_budget(target, target, 7)) == 1.0)
  with pytest.raises(ValueError, match='budget'):
    recall_at_budget(pred, target, 0)


def test_spearman_matches_scipy():
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(4, 30))
  target = pred + rng.normal(scale=[[0.1], [1.0], [5.0], [100.0]], size=(4, 30))
  got = np.asarray(spearman(pred, target))
  want = [scipy.stats.spearmanr(p, t).statistic for p, t in zip(pred, target)]
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(spearman(pred, -pred)), -1.0, atol=1e-6)
