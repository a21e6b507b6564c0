"""Heads layer: what judges features. It owns the built-in head kinds (``kinds``), the batched
grid probe (``probe``), the attention heads (``attention``), k-NN (``knn``), few-shot
(``fewshot``) and representation similarity measures (``similarity``). It imports core (the
top-level ``bench`` modules) only, never features, results, run, api or the CLI; import its
modules by full path (this file re-exports nothing).
"""
