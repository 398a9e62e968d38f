"""What every benchmark ends with: its figures printed as JSON, and written to `--output`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(figures: dict[str, Any], output: Path | None) -> None:
    text = json.dumps(figures, indent=2)
    print(text)
    if output:
        output.write_text(text + "\n")
