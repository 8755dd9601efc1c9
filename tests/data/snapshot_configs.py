"""Resolve every shipped recipe with the current code and dump the resolved configs as JSON."""

import json
import sys
from pathlib import Path

from segdistill.config import config_to_dict, load_config
from segdistill.detection.config import DetectionConfig

root = Path(sys.argv[1])
out = {}
for path in sorted(p for p in root.rglob("*.yaml") if "_base" not in p.parts):
    rel = path.relative_to(root).as_posix()
    schema = DetectionConfig if "/detection/" in rel else None
    cfg = load_config(path, [], schema=schema) if schema else load_config(path, [])
    out[rel] = config_to_dict(cfg)
Path(sys.argv[2]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print(len(out), "recipes")
