"""PaFu-KV's salience: what the cache should keep, learnt from a teacher that sees the future.

  targets.py  the SSE targets from the bidirectional teacher's attention (and the student's own)
  head.py     the Salience Estimation Head that scores tokens while generating
  losses.py   the distillation losses and the stage's typed config (DistillConfig)
  distill.py  the salience training stage's data: frozen teacher and student -> (features,
              targets) batches on the mesh, and the held-out evaluation
  ranking.py  recall@budget and Spearman of a predicted salience, and the heuristics' orders
  oracle.py   the `oracle` policy's scores: the teacher's salience on the `full` rollout
"""
