"""The cpu profile's stage-time sum: the latest run of each stage in ``run/times.txt``, by stage kind.

    python results/cpu/stage_times.py [results/cpu/run/times.txt]

``times.txt`` lines are ``stage rc seconds [note]``; ``#`` lines are session headers. A stage name with a
parenthesis (``train@drive_cnf(cosine, not adopted)``) is a trial or an aborted run, listed for the record and
not counted; a later line of the same stage supersedes an earlier one.
"""
from __future__ import annotations

import sys
from pathlib import Path

BUDGET_S = 5 * 3600  # issue 13: the whole profile in at most 5 hours


def latest_runs(path: Path) -> dict[str, int]:
    """Stage name -> wall seconds of its latest counted run."""
    latest: dict[str, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 3:
            raise ValueError(f"{path}:{n}: expected 'stage rc seconds [note]', got {line!r}")
        name, _, secs = fields[:3]
        if "(" in name:
            continue
        latest[name] = int(secs)
    return latest


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "run" / "times.txt")
    latest = latest_runs(path)
    kinds: dict[str, list[int]] = {}  # kind (the stage name before "@") -> [stages, seconds]
    for name, secs in latest.items():
        count_secs = kinds.setdefault(name.split("@")[0], [0, 0])
        count_secs[0] += 1
        count_secs[1] += secs
    total = sum(latest.values())
    print("| kind | stages | seconds |\n|---|---|---|")
    for kind, (count, secs) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"| {kind} | {count} | {secs:,} |")
    print(f"| all | {len(latest)} | {total:,} ({total / 3600:.2f} h; budget {BUDGET_S:,}: "
          f"{'within' if total <= BUDGET_S else 'over'} by {abs(BUDGET_S - total):,} s) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
