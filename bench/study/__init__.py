"""Study layer: papers as data and what bench says of them. It owns the paper-file schema and
loader (``paper``), a paper's cells resolved into jobs (``plan``), verdicts and claims
(``judge``), the pages and figures (``pages``, ``figures``), the published reference rows
(``references``), the papers' similarity figures and presets (``similarity``), the queries it
makes of the store (``queries``) and ``bench report`` (``report``). It sits between api and run:
it may import run and everything below, and nothing below imports it. The paper files themselves
are data in ``bench/papers/``. Import its modules by full path (this file re-exports nothing).
"""
