"""Decoding speed of an encoder-decoder: sentences a second with greedy decoding (beam 1) and beam 5.

    python bench/decode_speed.py                              # trains specs/reverse_copy.nn first (~20 s)
    python bench/decode_speed.py --checkpoint runs/reverse_copy-<date>
    python bench/decode_speed.py --json out.json

Decodes the 300 sources of data/reverse-copy/test.tsv (2 to 10 letters) as `nnspec predict` does
(nnspec.decode.decode_texts: batches of 64 sources; the encoder once per source and each decoder
step once; --full: one forward pass of the whole network per output step, as before), and reports
sentences a second and how many came out exactly reversed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnspec.decode import DEFAULT_LENGTH_PENALTY, decode_texts     # noqa: E402
from nnspec.trained import load               # noqa: E402

SPEC = ROOT / "specs" / "reverse_copy.nn"
TEST = ROOT / "data" / "reverse-copy" / "test.tsv"


def trained(checkpoint: str | None) -> str:
    if checkpoint:
        return checkpoint
    from nnspec.cli import main
    runs = tempfile.mkdtemp(prefix="decode-bench-")
    if main(["run", str(SPEC), "--runs", runs, "--quiet"]) != 0:
        raise SystemExit("training failed")
    return str(next(Path(runs).iterdir()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a run directory of specs/reverse_copy.nn (default: train one)")
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--length-penalty", type=float, default=DEFAULT_LENGTH_PENALTY, metavar="ALPHA",
                    help="GNMT's alpha a beam ranks by (0: plain log-probability)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--full", action="store_true", help="recompute the whole network at every output step")
    args = ap.parse_args()
    model = load(trained(args.checkpoint), spec=SPEC)
    rows = [line.split("\t") for line in TEST.read_text().splitlines()[1:]]
    sources, targets = [s for s, _ in rows], [t.split() for _, t in rows]
    results = []
    for beam in (int(b) for b in args.beams.split(",")):
        clock = time.perf_counter()
        decoded = decode_texts(model, sources, beam=beam, incremental=not args.full,
                               length_penalty=args.length_penalty)
        seconds = time.perf_counter() - clock
        exact = sum(d.outputs[0][0] == t for d, t in zip(decoded, targets))
        results.append({"beam": beam, "length_penalty": args.length_penalty, "incremental": not args.full, "sentences": len(sources), "seconds": round(seconds, 3),
                        "sentences_per_second": round(len(sources) / seconds, 1), "exact": exact})
        print(f"beam {beam}: {len(sources) / seconds:7.1f} sentences/s ({seconds:.2f} s for {len(sources)}), "
              f"{exact}/{len(sources)} exactly reversed")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
