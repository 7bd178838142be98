#!/usr/bin/env python3
"""Prints the problem options a bundled model was trained with (its
training.json), one `--problem-opt key=value` pair per line, so the demo and
the research loop prompt the model with its own task."""
import json
import sys
from pathlib import Path

record = Path(sys.argv[1]) / "training.json"
if record.exists():
    for key, value in (json.loads(record.read_text()).get("problem_options") or {}).items():
        print("--problem-opt")
        print(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
