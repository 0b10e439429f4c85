"""The dictionary baseline a lemmatizer must beat, on UD English-EWT.

    python bench/lemma_baseline.py [--split test]

A form-and-tag dictionary built from the training file: a word's lemma is the most frequent
training lemma of its (form, gold UPOS) pair; else of its lower-cased form with that tag; else of
its form under any tag; else the form itself for proper nouns, numbers, symbols and foreign words,
and the lower-cased form for the rest (right for most unseen regular words). Reports lemma accuracy
over all syntactic words, and over the words whose form never occurs in training (the figure a
character-level model is for).
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from nnspec.data.files import read_lines

EWT = Path(__file__).resolve().parent.parent / "data" / "ud-english-ewt"


def words(path: Path):
    """(form, upos, lemma) of each syntactic word (multiword-token ranges and empty nodes skipped)."""
    for line in read_lines(path):
        if not line or line.startswith("#"):
            continue
        cells = line.split("\t")
        if "-" in cells[0] or "." in cells[0]:
            continue
        yield cells[1], cells[3], cells[2]


KEEP_FORM = {"PROPN", "NUM", "SYM", "X"}


class LemmaDictionary:
    def __init__(self, train):
        self.by_form_tag: dict[tuple, Counter] = defaultdict(Counter)
        self.by_lower_tag: dict[tuple, Counter] = defaultdict(Counter)
        self.by_form: dict[str, Counter] = defaultdict(Counter)
        for form, upos, lemma in train:
            self.by_form_tag[form, upos][lemma] += 1
            self.by_lower_tag[form.lower(), upos][lemma] += 1
            self.by_form[form][lemma] += 1

    def seen(self, form: str) -> bool:
        return form in self.by_form

    def lemma(self, form: str, upos: str) -> str:
        for table, key in ((self.by_form_tag, (form, upos)), (self.by_lower_tag, (form.lower(), upos)),
                           (self.by_form, form)):
            if key in table:
                return table[key].most_common(1)[0][0]
        # UD lemmas keep a proper noun's (and a number's, a symbol's, a foreign word's) form
        return form if upos in KEEP_FORM else form.lower()


def evaluate(split: str = "test") -> dict:
    lemmas = LemmaDictionary(words(EWT / "en_ewt-ud-train.conllu.gz"))
    right = total = unseen_right = unseen = 0
    for form, upos, gold in words(EWT / f"en_ewt-ud-{split}.conllu.gz"):
        ok = lemmas.lemma(form, upos) == gold
        right += ok
        total += 1
        if not lemmas.seen(form):
            unseen_right += ok
            unseen += 1
    return {"split": split, "words": total, "accuracy": right / total,
            "unseen_words": unseen, "unseen_accuracy": unseen_right / unseen}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    r = evaluate(parser.parse_args().split)
    print(f"EWT {r['split']}: lemma accuracy {100 * r['accuracy']:.2f}% on {r['words']:,} words; "
          f"{100 * r['unseen_accuracy']:.2f}% on the {r['unseen_words']:,} words unseen in training")
