"""A trained tagger's accuracy on the test words it does not know.

    python -m bench.unseen_words RUN_DIR --spec specs/pos_char_bilstm.nn [--split test]

Reads the run's spec and data as ``nnspec run`` did (same split, same vocabularies, checked against
the checkpoint's), tags the split with the run's best weights, and reports the accuracy on every
word, on the words **unseen in training** (their form never occurs in the training part), and on
the words **unknown to the word vocabulary** (unseen, or rarer than ``min_count``: the word
embedding sees ``<unk>``; the figure the README gives for ``pos_bilstm.nn``, 55.5%).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path



def unseen_accuracy(run: str | Path, spec: str | Path | None = None, split: str = "test") -> dict:
    """``spec``: the spec file the run was trained from (its data paths are relative to it), else the run's copy."""
    from nnspec import load
    from nnspec.dataset import _slice, field_specs, read_raw
    from nnspec.errors import Diagnostics
    from nnspec.session import open_session
    model = load(run, spec=spec)
    session = open_session(spec or Path(run) / "spec.nn", overrides=[])
    data = session.data
    words = next(v.name for v in session.plan.inputs if v.elem == "token" and v.view is None)
    tags = next(v.name for v in session.plan.targets)
    for name, vocab in data.vocabs.items():   # the data as the run saw it
        assert vocab.itos == model.vocabs[name].itos, f"the vocabulary of {name} differs from the run's"
    fields = [f for f in field_specs(session.plan.inputs + session.plan.targets) if f.name in (words, tags)]
    raw = read_raw(session.compiled.flat, fields, Diagnostics())
    if session.settings.limit is not None:   # the slice the run trained on
        raw = _slice(raw, session.settings.limit)
    seen = {w for sentence in raw.splits["train"][words] for w in sentence}
    forms = raw.splits[split][words]
    enc = data.splits[split]
    right = {"all": 0, "unseen": 0, "unknown": 0}
    total = dict.fromkeys(right, 0)
    for batch in data.batches(split, 64, dtype=model.dtype):
        p = model.forward(batch.arrays, batch.lengths)[session.plan.outputs[0]]
        guess = p.argmax(-1)
        for b, i in enumerate(batch.index):
            gold, ids = enc.data[tags][i], enc.data[words][i]
            assert len(forms[i]) == len(gold)
            for t, (form, g) in enumerate(zip(forms[i], gold)):
                ok = int(guess[t, b] == g)
                for kind, is_kind in (("all", True), ("unseen", form not in seen), ("unknown", ids[t] == 1)):
                    if is_kind:
                        right[kind] += ok
                        total[kind] += 1
    return {k: {"words": total[k], "accuracy": right[k] / total[k] if total[k] else float("nan")} for k in total}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--spec", help="the spec file the run was trained from (default: the run's spec.nn)")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    r = unseen_accuracy(args.run, args.spec, args.split)
    print(json.dumps(r))
    print(f"{args.split}: {100 * r['all']['accuracy']:.2f}% of {r['all']['words']:,} words; "
          f"{100 * r['unseen']['accuracy']:.2f}% on the {r['unseen']['words']:,} unseen in training; "
          f"{100 * r['unknown']['accuracy']:.2f}% on the {r['unknown']['words']:,} unknown to the word vocabulary")


if __name__ == "__main__":
    main()
