"""Results layer: what a run leaves behind. It owns the record's tag and metric names
(``record``), MLflow tracking (``tracking``), the leaderboard (``leaderboard``) and published
reference numbers (``references``). It imports core (the top-level ``bench`` modules) only, never
features, heads, run, api or the CLI; import its modules by full path (this file re-exports nothing).
"""
