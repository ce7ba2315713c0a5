"""Choose the tests the quick loop (`pytest -m "not slow and not native"`) skips, from a measured run.

    python -m pytest -m "not native" --durations=0 -p no:logging > durations.log
    python scripts/slow_tests.py durations.log [--budget 140] > tests/slow_tests.txt

Takes the slowest tests (call + setup + teardown) until the rest sums to at most ``--budget`` seconds, always
leaving at least one test per file, so the quick loop still covers every module. tests/conftest.py marks the
listed tests `slow`; the full suite (CI's gate) runs them all.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys


def durations(text: str) -> dict[str, float]:
    per_test: dict[str, float] = collections.defaultdict(float)
    for line in text.split("slowest durations", 1)[-1].splitlines():
        match = re.match(r"([\d.]+)s (?:call|setup|teardown)\s+(.+)$", line.strip())  # ids may hold spaces
        if match:
            per_test[match.group(2)] += float(match.group(1))
    return per_test


def choose(per_test: dict[str, float], budget: float) -> list[str]:
    left = collections.Counter(t.split("::")[0] for t in per_test)
    remaining, slow = sum(per_test.values()), []
    for test, seconds in sorted(per_test.items(), key=lambda kv: -kv[1]):
        if remaining <= budget:
            break
        module = test.split("::")[0]
        if left[module] > 1:
            slow.append(test)
            left[module] -= 1
            remaining -= seconds
    return sorted(slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--budget", type=float, default=140.0, help="seconds the quick loop's tests may take")
    args = parser.parse_args()
    with open(args.log) as handle:
        slow = choose(durations(handle.read()), args.budget)
    sys.stdout.write("# Tests the quick loop skips (marked slow by tests/conftest.py); made by scripts/slow_tests.py\n"
                     + "".join(f"{test}\n" for test in slow))


if __name__ == "__main__":
    main()
