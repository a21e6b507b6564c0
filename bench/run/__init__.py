"""Run layer: the engine putting the others together into jobs. It owns run specs (``spec``), one
job end to end (``jobs``), sweeps (``sweep``), costs (``costs``), executors and scheduling
(``scheduler``, ``executors``) and similarity matrices (``similarity_run``). It knows no paper:
papers, verdicts and figures are the study layer's. It may import core, features, heads and
results, never study, api or the CLI; import its modules by full path (this file re-exports
nothing).
"""
