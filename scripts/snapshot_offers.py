"""Write launcher/data/offers-snapshot.json from SkyPilot's catalog CSVs (never by hand).

    python scripts/snapshot_offers.py [--catalog-dir DIR] [--date YYYY-MM-DD] [--source TEXT]

DIR holds SkyPilot's layout (<cloud>/vms.csv, common/accelerators.csv); default: the user's
~/.sky/catalogs/v8, as SkyPilot downloaded it. SkyPilot itself reads the CSVs
(sky.catalog.list_accelerators, all regions), in a subprocess whose HOME points at a copy, so
nothing is fetched and the user's SkyPilot state is untouched. The date recorded is when the CSVs
were fetched (--date, default the newest file's mtime), never the day the script ran.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher import offers  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog-dir", type=Path, default=offers.sky_catalog_dir())
    ap.add_argument("--date", default=None, help="when the CSVs were fetched (default: their newest mtime)")
    ap.add_argument("--source", default=None, help="where the CSVs came from, recorded in the snapshot")
    ap.add_argument("-o", "--output", type=Path, default=offers.SNAPSHOT)
    a = ap.parse_args()
    csvs = [a.catalog_dir / c / "vms.csv" for c in offers.CATALOG_CLOUDS if (a.catalog_dir / c / "vms.csv").is_file()]
    if not csvs:
        print(f"no SkyPilot catalog under {a.catalog_dir} (expected <cloud>/vms.csv)", file=sys.stderr)
        return 2
    date = a.date or datetime.fromtimestamp(max(p.stat().st_mtime for p in csvs), tz=timezone.utc).date().isoformat()
    with tempfile.TemporaryDirectory() as home:
        dest = Path(home) / ".sky" / "catalogs" / offers.CATALOG_VERSION
        shutil.copytree(a.catalog_dir, dest)
        env = dict(os.environ, HOME=home, SKY_RUNTIME_DIR=home, SKYPILOT_DISABLE_USAGE_COLLECTION="1",
                   SKYPILOT_API_SERVER_ENDPOINT="http://127.0.0.1:9")
        for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            env[var] = "http://127.0.0.1:9"  # read these CSVs, never today's
        built = offers.run_sky([p.parent.name for p in csvs], env=env)
    if built["failed"]:
        print(f"SkyPilot could not read: {built['failed']}", file=sys.stderr)
        return 1
    data = {"date": date, "generated_by": "scripts/snapshot_offers.py",
            "source": a.source or f"SkyPilot catalog CSVs ({offers.CATALOG_VERSION}) from {a.catalog_dir}",
            "rows": built["rows"]}
    a.output.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n = sum(len(v) for v in built["rows"].values())
    print(f"wrote {a.output}: {n} offers from {', '.join(p.parent.name for p in csvs)} (catalog of {date})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
