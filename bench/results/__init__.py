"""Results layer: what a run leaves behind. It owns the record's tag and metric names
(``record``), MLflow tracking (``tracking``) and the leaderboard (``leaderboard``). It imports core
(the top-level ``bench`` modules) only, never features, heads, run, study, api or the CLI; import
its modules by full path (this file re-exports nothing).
"""
