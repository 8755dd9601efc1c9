"""Resolve every shipped recipe with the current code and dump the resolved configs as JSON.

``python tests/data/snapshot_configs.py src/segdistill/configs OUT.json [--only-new STORED.json ...]``:
with ``--only-new``, only the recipes none of the STORED files has (recipes added later, written to
``tests/data/resolved_recipes_added.json``)."""

import json
import sys
from pathlib import Path

from segdistill.config import config_to_dict, load_config
from segdistill.detection.config import DetectionConfig

root = Path(sys.argv[1])
known: set[str] = set()
if "--only-new" in sys.argv:
    for stored in sys.argv[sys.argv.index("--only-new") + 1 :]:
        known |= set(json.loads(Path(stored).read_text()))
out = {}
for path in sorted(p for p in root.rglob("*.yaml") if "_base" not in p.parts):
    rel = path.relative_to(root).as_posix()
    if rel in known:
        continue
    schema = DetectionConfig if "/detection/" in rel else None
    cfg = load_config(path, [], schema=schema) if schema else load_config(path, [])
    out[rel] = config_to_dict(cfg)
out = json.loads(json.dumps(out))  # tuples as lists, as the test compares them
Path(sys.argv[2]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
print(len(out), "recipes")
