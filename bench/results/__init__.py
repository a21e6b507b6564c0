"""Results layer: what a run leaves behind. It owns the record's tag and metric names
(``record``), the tracking store (``store``: the client; ``runs``: results logged, found and
superseded; ``claims``: the cell lock; ``outbox``: results kept on disk until they can be logged;
``artifacts``: a run's files; ``publish``: the leaderboard and report runs; ``matrices``:
similarity runs; ``reader``: read-only lookups) and the leaderboard (``leaderboard``). It imports
core (the top-level ``bench`` modules) only, never features, heads, run, study, api or the CLI;
import its modules by full path (this file re-exports nothing).
"""
