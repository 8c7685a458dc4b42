"""Reading a JSONL file of prompt/answer rows, checked: the one reader of local task data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file, checked to carry string `prompt` and `answer` (lm-eval renders them
    through templates; a number or missing column would fail late and obscurely)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON ({err})") from None
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "answer"))):
                raise ValueError(f"{path}:{lineno}: each row needs string fields 'prompt' and 'answer'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
