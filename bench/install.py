"""Install time of the README's two commands in fresh virtualenvs with the interpreter's own pip, no cache.

    python bench/install.py --json bench/results/install-cpu.json [--extras dali,test] [--repeats 1]

Each run: `python -m venv` (the pip that ships with the interpreter, not upgraded), then
`pip install torch==2.13.0 -e ".[EXTRA]"` from the repository root with PIP_NO_CACHE_DIR=1, timed
wall clock, with the load average before and after (the machine may be shared). The pip log is
scanned for distributions fetched in more than one version: the sign of resolver backtracking.
The virtualenvs are deleted afterwards.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FETCHED = re.compile(r"^\s*(?:Downloading|Processing) (?:\S*/)?([A-Za-z0-9_.]+?)-(\d[^-\s]*)[-.]", re.M)


def fetched_versions(log: str) -> dict[str, list[str]]:
    """Distribution -> versions that pip downloaded or took from a local file, in order."""
    seen = collections.defaultdict(list)
    for name, version in FETCHED.findall(log):
        seen[re.sub(r"[-_.]+", "-", name).lower()].append(version)
    return dict(seen)


def time_install(python: str, extra: str, log_dir: Path) -> dict:
    venv = Path(tempfile.mkdtemp(prefix=f"fastvid-install-{extra}-"))
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        vpython = str(venv / "bin" / "python")
        pip_version = subprocess.run([vpython, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
        command = [vpython, "-m", "pip", "install", "torch==2.13.0", "-e", f".[{extra}]"]
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "PIP_NO_CACHE_DIR": "1"}, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    log = proc.stdout + proc.stderr
    (log_dir / f"install-{extra}.log").write_text(log)
    versions = fetched_versions(log)
    return {"command": f'pip install torch==2.13.0 -e ".[{extra}]"', "pip": pip_version, "returncode": proc.returncode,
            "seconds": round(seconds, 1), "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after], "distributions": len(versions),
            "fetched_more_than_once": {k: v for k, v in versions.items() if len(v) > 1}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--extras", default="dali,test", help="comma-separated extras, one install each")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--python", default=sys.executable, help="interpreter whose venv and bundled pip are used")
    p.add_argument("--logs", default=tempfile.gettempdir(), help="directory for the pip logs")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    runs = []
    for _ in range(args.repeats):
        for extra in args.extras.split(","):
            runs.append(time_install(args.python, extra, Path(args.logs)))
            print(runs[-1], flush=True)
    from fastvid.benchmarks.common import device_info, write_json

    write_json({"benchmark": "install", "device_info": device_info(), "python": args.python, "runs": runs,
                "note": "fresh venv, the interpreter's bundled pip, PIP_NO_CACHE_DIR=1; this machine's pip config adds "
                        "a local find-links/extra index (the CPU torch wheel) and a torch<=2.14.1 constraint"}, args.json)
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
