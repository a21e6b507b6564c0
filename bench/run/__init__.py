"""Run layer: putting the others together into jobs. It owns run specs (``spec``), one job end to
end (``jobs``), sweeps (``sweep``), executors and scheduling (``scheduler``, ``executors``) and
similarity runs (``similarity_run``). It may import core, features, heads and results, never api
or the CLI; import its modules by full path (this file re-exports nothing).
"""
