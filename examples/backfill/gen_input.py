#!/usr/bin/env python3
"""Write the backfill example's input: JSON lines `{"user_id": "<n>", "signup": "<date>"}`.

The ids are a permutation of 1..count (unique, shuffled by an affine map modulo count), so the file
is written streaming: 5,000,000 lines need no more memory than 5. `--bad-lines K` inserts K
malformed lines, for tests, at the 0-based line numbers `bad_line_positions(count, K)`, cycling
through the kinds in `BAD_KINDS`: not JSON, JSON without user_id, a duplicate of the previous id.

    python3 gen_input.py --count 1000 --out users.jsonl [--seed 0] [--bad-lines 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence

BAD_KINDS = ("not_json", "missing_id", "duplicate_id")
_FIRST_SIGNUP = dt.date(2015, 1, 1)
_SIGNUP_DAYS = 3653  # ten years


def bad_line_positions(count: int, bad_lines: int) -> list[int]:
    """0-based line numbers, in the output file, of the malformed lines (spread evenly)."""
    return [(j + 1) * count // (bad_lines + 1) + j for j in range(bad_lines)]


def _id_permutation(count: int, seed: int) -> tuple[int, int]:
    """(a, b) with gcd(a, count) == 1, so i -> (a*i + b) % count is a bijection on 0..count-1."""
    if count <= 1:
        return 1, 0
    rng = random.Random(f"ids:{seed}")
    a = rng.randrange(1, count)
    while math.gcd(a, count) != 1:
        a = a % (count - 1) + 1
    return a, rng.randrange(count)


def iter_lines(count: int, seed: int = 0, bad_lines: int = 0) -> Iterator[str]:
    """Yield the output lines (each ending in a newline), good and bad, in file order."""
    if count < 0 or bad_lines < 0:
        raise ValueError("count and bad_lines must be >= 0")
    a, b = _id_permutation(count, seed)
    dates = [(_FIRST_SIGNUP + dt.timedelta(days=d)).isoformat() for d in range(_SIGNUP_DAYS)]
    rng = random.Random(f"signup:{seed}")
    bad_after = [(j + 1) * count // (bad_lines + 1) for j in range(bad_lines)]
    next_bad = 0
    previous_id: str | None = None
    for i in range(count + 1):
        # Malformed lines scheduled after i good lines come before good line number i.
        while next_bad < bad_lines and bad_after[next_bad] == i:
            kind = BAD_KINDS[next_bad % len(BAD_KINDS)]
            signup = dates[rng.randrange(_SIGNUP_DAYS)]
            if kind == "missing_id":
                yield f'{{"signup": "{signup}"}}\n'
            elif kind == "duplicate_id" and previous_id is not None:
                yield f'{{"user_id": "{previous_id}", "signup": "{signup}"}}\n'
            else:
                yield f"this is not JSON {{ line {i + next_bad}\n"
            next_bad += 1
        if i == count:
            break
        previous_id = str((a * i + b) % count + 1)
        yield f'{{"user_id": "{previous_id}", "signup": "{dates[rng.randrange(_SIGNUP_DAYS)]}"}}\n'


def generate(out: str, count: int, seed: int = 0, bad_lines: int = 0) -> int:
    """Write the file atomically (temporary file, then rename); return the good lines written."""
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as f:
            f.writelines(iter_lines(count, seed, bad_lines))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the backfill example's input.")
    parser.add_argument("--count", type=int, required=True, help="number of good lines")
    parser.add_argument("--out", required=True, help="output path (JSON lines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-lines", type=int, default=0, help="malformed lines to insert")
    args = parser.parse_args(argv)
    if args.count < 0 or args.bad_lines < 0:
        parser.error("--count and --bad-lines must be >= 0")
    written = generate(args.out, args.count, args.seed, args.bad_lines)
    extra = f" (+{args.bad_lines} malformed lines)" if args.bad_lines else ""
    print(f"wrote {written} items to {args.out}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
