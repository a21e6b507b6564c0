"""Heads layer: what judges features. It owns the built-in head kinds (``kinds``), the one memory
policy (``memory``: what a head holds within --memory-budget, its refusals and estimate, the
readers' reused host buffers), the reader of cached splits (``streaming``), the batched grid
probe (``probe``), logistic regression (``logreg``), the attention heads (``attention``), k-NN
(``knn``), few-shot (``fewshot``) and representation similarity measures (``similarity``). It
imports core (the top-level ``bench`` modules) only, never features, results, run, api or the
CLI; import its modules by full path (this file re-exports nothing).
"""
