"""The lemmatizer's own figures on UD English-EWT, from decoding (no dictionary anywhere).

    python bench/lemma_eval.py runs/lemmatizer-<date>            # greedy and beam 5 on test
    python bench/lemma_eval.py runs/lemmatizer-<date> --beams 1 --split dev
    python bench/lemma_eval.py runs/lemmatizer-<date> --beams 5 --length-penalty 0,0.6,1,2 --split dev

Decodes the lemma of every syntactic word of the split from its form and gold UPOS tag with the
trained model of specs/lemmatizer.nn (nnspec.decode: the encoder once per word, each decoder step
once; batches of 256 words; a beam ranks by log p over GNMT's length penalty with
--length-penalty ALPHA, several: each in turn, 0: plain log-probability), and reports lemma accuracy over all words and over the words whose
form never occurs in training, words decoded a second, and the dictionary baseline
(bench/lemma_baseline.py) on the same split for comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lemma_baseline import EWT, LemmaDictionary, words   # noqa: E402
from nnspec.decode import DEFAULT_LENGTH_PENALTY, beam_search, greedy, symbol_ids   # noqa: E402
from nnspec.trained import load                                # noqa: E402


def lemmatize(model, forms: list[str], tags: list[str], *, beam: int = 1, batch: int = 256,
              incremental: bool = True, length_penalty: float = DEFAULT_LENGTH_PENALTY) -> list[str]:
    """Each word's lemma decoded from its form's characters and its tag (the inputs form and upos)."""
    decoder = model.compiled.decoder
    out_vocab, form_vocab, tag_vocab = (model.vocabs[k] for k in (decoder.input, "form", "upos"))
    start, end = symbol_ids(decoder, out_vocab)
    order = np.argsort([len(f) for f in forms], kind="stable")    # similar lengths share a batch
    lemmas: list[str] = [""] * len(forms)
    for a in range(0, len(forms), batch):
        part = order[a:a + batch]
        onehot = np.zeros((len(part), len(tag_vocab)), dtype=np.float32)
        for i, w in enumerate(part):
            onehot[i, tag_vocab.encode([tags[w]])] += 1
        feeds = {"form": [form_vocab.encode(forms[w]) for w in part], "upos": onehot}
        best = ([[h] for h in greedy(model, feeds, start=start, end=end, incremental=incremental)] if beam == 1
                else beam_search(model, feeds, beam=beam, start=start, end=end, incremental=incremental,
                                 length_penalty=length_penalty))
        for w, hyps in zip(part, best):
            lemmas[w] = "".join(out_vocab.decode(hyps[0].tokens))
    return lemmas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory of specs/lemmatizer.nn")
    ap.add_argument("--split", default="test", choices=["dev", "test"])
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--length-penalty", default=str(DEFAULT_LENGTH_PENALTY), metavar="ALPHA[,ALPHA..]",
                    help=f"GNMT's alpha for a beam (default {DEFAULT_LENGTH_PENALTY}; 0: plain log-probability); "
                         "several, comma-separated: each in turn")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--limit", type=int, help="the first N words only (a quick look)")
    ap.add_argument("--errors", type=int, default=0, metavar="N", help="show N of the wrong lemmas")
    ap.add_argument("--full", action="store_true", help="recompute the whole network at every output step")
    args = ap.parse_args()
    model = load(args.run)
    train = list(words(EWT / "en_ewt-ud-train.conllu.gz"))
    dictionary = LemmaDictionary(train)
    data = list(words(EWT / f"en_ewt-ud-{args.split}.conllu.gz"))[:args.limit]
    forms, tags, gold = ([w[i] for w in data] for i in range(3))
    unseen = np.array([not dictionary.seen(f) for f in forms])
    base = np.array([dictionary.lemma(f, t) == g for f, t, g in zip(forms, tags, gold)])
    print(f"dictionary baseline on {args.split}: {100 * base.mean():.2f}% of {len(forms):,} words, "
          f"{100 * base[unseen].mean():.2f}% of the {unseen.sum():,} unseen")
    results = []
    alphas = [float(a) for a in args.length_penalty.split(",")]
    runs = [(beam, alpha) for beam in (int(b) for b in args.beams.split(","))
            for alpha in (alphas if beam > 1 else [0.0])]          # greedy does not rank
    for beam, alpha in runs:
        clock = time.perf_counter()
        lemmas = lemmatize(model, forms, tags, beam=beam, incremental=not args.full, length_penalty=alpha)
        seconds = time.perf_counter() - clock
        right = np.array([p == g for p, g in zip(lemmas, gold)])
        r = {"beam": beam, "length_penalty": alpha, "split": args.split, "words": len(forms),
             "accuracy": float(right.mean()),
             "unseen_words": int(unseen.sum()), "unseen_accuracy": float(right[unseen].mean()),
             "words_per_second": round(len(forms) / seconds, 1)}
        results.append(r)
        for i in np.flatnonzero(~right)[:args.errors]:
            print(f"  {forms[i]} {tags[i]}: {lemmas[i]!r}, gold {gold[i]!r}")
        what = f"beam {beam}" + (f", length penalty {alpha:g}" if beam > 1 else "")
        print(f"{what}: lemma accuracy {100 * r['accuracy']:.2f}%, on unseen words "
              f"{100 * r['unseen_accuracy']:.2f}%; {r['words_per_second']:.0f} words/s ({seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
