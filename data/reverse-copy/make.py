"""Make the reverse-copy data set: each line a source sequence of letters and, as the target,
the same letters in reverse order (tab-separated; tokens separated by spaces).

Deterministic (a fixed seed): `python data/reverse-copy/make.py` rewrites the same files.
Lengths 2 to 10 over 10 letters, 3,000 training examples, 300 for dev and for test.
"""
from pathlib import Path

import numpy as np

LETTERS = "abcdefghij"
SIZES = {"train": 3000, "dev": 300, "test": 300}


def examples(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        src = [LETTERS[i] for i in rng.integers(0, len(LETTERS), rng.integers(2, 11))]
        out.append((" ".join(src), " ".join(reversed(src))))
    return out


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = np.random.default_rng(2026)
    for split, n in SIZES.items():
        rows = ["src\ttgt"] + [f"{s}\t{t}" for s, t in examples(rng, n)]
        (here / f"{split}.tsv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
