"""Features layer: turning images into cached feature arrays. It owns weight downloads
(``weights``), compilation (``compile``), image decoding and the loader pipeline (``images``,
``pipeline``), extraction (``extract``), the feature cache (``cache``), dataset folders (``data``)
and file-listed tasks (``filetask``). It imports core (the top-level ``bench`` modules) only, never
heads, results, run, api or the CLI; import its modules by full path (this file re-exports nothing).
"""
