"""Merge rows of another ckd.json (e.g. the GPU run's) into bench/results/ckd.json and rewrite the report.

    .venv/bin/python bench/ckd/merge.py /work/.device/.../ckd.json
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_report  # noqa: E402
from run import RESULTS, append_record, read_records  # noqa: E402

for path in sys.argv[1:]:
    for row in json.loads(Path(path).read_text()):
        append_record(row, RESULTS)
write_report(read_records(RESULTS), RESULTS.with_suffix(".md"), RESULTS.with_suffix(".png"))
