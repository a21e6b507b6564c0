"""The one digest of JSON-able settings: what the feature cache, a resolved protocol and a job's
lock file are keyed on (sorted keys, anything else as its ``str``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
