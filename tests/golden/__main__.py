"""python -m tests.golden [--write]: check (or, with --write, rewrite) the golden plan texts."""
from __future__ import annotations

import sys

from tests.golden import SPECS, golden_text, path


def main(argv: list[str]) -> int:
    write = "--write" in argv
    stale = []
    for name in SPECS:
        text = golden_text(name)
        p = path(name)
        if p.exists() and p.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if write:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
    if write:
        print(f"rewrote {len(stale)} of {len(SPECS)} golden plans" + (f": {', '.join(stale)}" if stale else ""))
    else:
        print(f"{len(stale)} of {len(SPECS)} golden plans differ" +
              (f": {', '.join(stale)} (python -m tests.golden --write rewrites them)" if stale else ""))
    return 1 if stale and not write else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
