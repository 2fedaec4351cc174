"""Where every benchmark leaves its figures: reports/benchmarks/NAME.json, beside the printed table."""
import json
from pathlib import Path


def save_report(report: dict, out: Path) -> Path:
    """Write ``report`` as JSON to ``out`` (folders created) and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return out
