"""Reference points that need no training, to read a model's figures against."""
from __future__ import annotations

from collections import Counter, defaultdict

from .dataset import BoundData


def most_frequent_tag(data: BoundData, words: str, tags: str, split: str = "test") -> float:
    """Accuracy of tagging each word with its most frequent training tag (unseen words: the most
    frequent tag overall), on ``split``."""
    train = data.splits["train"]
    by_word: dict[int, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for ws, ts in zip(train.data[words], train.data[tags]):
        for w, t in zip(ws.tolist(), ts.tolist()):
            by_word[w][t] += 1
            overall[t] += 1
    fallback = overall.most_common(1)[0][0]
    best = {w: c.most_common(1)[0][0] for w, c in by_word.items()}
    unk = 1  # <unk>: rare training words share it; at test time it means "never seen"
    right = total = 0
    for ws, ts in zip(data.splits[split].data[words], data.splits[split].data[tags]):
        for w, t in zip(ws.tolist(), ts.tolist()):
            guess = best.get(w, fallback) if w != unk else fallback
            right += guess == t
            total += 1
    return right / total if total else float("nan")
