"""Train/dev/test splits and cross-validation folds, deterministic by seed."""
from __future__ import annotations

import numpy as np

from .errors import DataError
from .raw import RawData


def _take(raw: RawData, split: str, index: np.ndarray) -> tuple[dict[str, list], list]:
    columns = {name: [values[i] for i in index] for name, values in raw.splits[split].items()}
    return columns, [raw.origins[split][i] for i in index]


def _pool(raw: RawData) -> str:
    """The split to cut from: "all" when the source is unsplit, else "train"."""
    for name in ("all", "train"):
        if name in raw.splits:
            return name
    raise ValueError(f"no train data to cut from (splits: {', '.join(raw.splits)})")


def _assemble(raw: RawData, pool: str, parts: dict[str, np.ndarray]) -> RawData:
    """The splits the source provides (but the pool), plus the new parts, in
    train/dev/test order; each part keeps the file order of its examples."""
    splits, origins = {}, {}
    for name in ("train", "dev", "test"):
        if name in parts:
            splits[name], origins[name] = _take(raw, pool, np.sort(parts[name]))
        elif name in raw.splits and name != pool:
            splits[name], origins[name] = raw.splits[name], raw.origins[name]
    return RawData(splits, origins, raw.stream)


def split_examples(raw: RawData, dev: float = 0.0, test: float = 0.0, seed: int = 0) -> RawData:
    """Cut the dev and test fractions the source does not provide out of its
    unsplit ("all") or train examples, after a shuffle by ``seed``; the rest is
    train. Splits the source provides are kept as they are."""
    if not (0 <= dev < 1 and 0 <= test < 1 and dev + test < 1):
        raise ValueError(f"dev and test must be fractions summing to less than 1, got {dev} and {test}")
    wanted = {name: p for name, p in (("dev", dev), ("test", test)) if p > 0 and name not in raw.splits}
    if raw.stream and wanted:
        raise ValueError("a text stream is split by its reader: text(split = [...])")
    if "all" not in raw.splits and not wanted:
        return raw
    pool = _pool(raw)
    n = raw.size(pool)
    counts = {name: max(1, round(n * p)) for name, p in wanted.items()}
    if sum(counts.values()) >= n:
        raise DataError(f"{n} examples are too few to cut dev = {dev} and test = {test} from",
                        raw.origins[pool][0][0])
    order = np.random.default_rng(seed).permutation(n)
    parts, start = {}, 0
    for name, count in counts.items():
        parts[name] = order[start:start + count]
        start += count
    parts["train"] = order[start:]
    return _assemble(raw, pool, parts)


def kfold(raw: RawData, k: int, fold: int, seed: int = 0) -> RawData:
    """Fold ``fold`` of ``k``-fold cross-validation: that fold is "test", the
    others "train". Over the k folds, every example is tested exactly once."""
    if k < 2 or not 0 <= fold < k:
        raise ValueError(f"need k >= 2 and 0 <= fold < k, got k = {k}, fold = {fold}")
    first_file = next((o[0][0] for o in raw.origins.values() if o), "<data>")
    if raw.stream:
        raise DataError("a text stream cannot be cross-validated (--folds): its examples are one running "
                        "text", first_file)
    pool = _pool(raw)
    if "test" in raw.splits:
        raise DataError("the data already has a test split, and cross-validation (--folds) makes its own: "
                        "give the data as one set (or train and evaluate on the given split, without --folds)",
                        raw.origins["test"][0][0] if raw.origins.get("test") else first_file)
    n = raw.size(pool)
    if n < k:
        raise DataError(f"{n} examples are too few for {k} folds", raw.origins[pool][0][0])
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    rest = np.concatenate(folds[:fold] + folds[fold + 1:])
    return _assemble(raw, pool, {"train": rest, "test": folds[fold]})
