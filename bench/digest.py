"""The one digest of JSON-able settings: what the feature cache, a resolved protocol and a job's
lock file are keyed on (sorted keys, anything else as its ``str``); and the result schema's
version, which every result identity digests (here, below both the run layer that resolves
identities and the results layer that writes records, so neither imports the other for it)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

RESULT_SCHEMA = "2"  # bump when the record's names or meaning change (the identity digests it)


def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
