"""ONNX export, verified and timed:

    python bench/onnx_export.py                 # every spec of specs/ and bench/specs/: a table
    python bench/onnx_export.py --speed         # and onnxruntime against nnspec on the tagger
    python bench/onnx_export.py --json out.json
    python bench/onnx_export.py --no-table --axes   # networks on several axes: per case, float32 and float64
    python bench/onnx_export.py --no-table --ewt runs/pos_bilstm_features-<date>   # a trained tagger

Per spec: what each loop became (fused RNN/LSTM/GRU or Scan) and the worst difference from
nnspec's forward pass of each oracle (onnxruntime and onnx's reference evaluator, on the fused
export and on the all-Scan export) over a batch of 1, of 3, a padded batch of mixed lengths and a
length the export never saw (nnspec.onnx.verify). Vocabularies are 23 words and 23 classes (no
data is read). --speed: sentences a second of the forward pass of specs/pos_bilstm.nn (20,000
words, 17 tags) in nnspec and in onnxruntime (one thread each), on batches of 32 sentences of
5 to 40 words, sorted by length as nnspec batches them, and one sentence at a time.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnspec import Model                       # noqa: E402
from nnspec.compiler import compile_file       # noqa: E402


def model_of(path: str, dtype=None, size: int = 23) -> Model:
    compiled = compile_file(path)
    vocabs = {v.name: (17 if v.role == "target" else size) for v in compiled.plan.inputs + compiled.plan.targets
              if (v.integer or v.elem in ("bag", "char_bag")) and not isinstance(v.card, int)}
    return Model.from_file(path, vocabs=vocabs or None, read_data=False, **({"dtype": dtype} if dtype else {}))


def table(paths: list[str]) -> list[dict]:
    from nnspec.onnx.verify import verify
    rows = []
    for path in paths:
        name = str(Path(path).relative_to(ROOT))
        start = time.perf_counter()
        try:
            result = verify(model_of(path))
            row = {"spec": name, "loops": result.inventory, "worst": result.worst}
        except Exception as e:   # reported in the table, not hidden
            row = {"spec": name, "loops": "-", "error": f"{type(e).__name__}: {e}"}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(_row(row), flush=True)
    return rows


def several_axes_specs() -> list[tuple[str, str]]:
    """(name, text) of the specs on several sequence axes: those of specs/ and the language
    reference's examples (docs/language.md)."""
    import re
    from nnspec.compiler import compile_text
    from nnspec.plan import plan_axis_names
    found = []
    for path in sorted(glob.glob(str(ROOT / "specs" / "*.nn"))):
        text = Path(path).read_text()
        if len(plan_axis_names(compile_file(path).plan)) > 1:
            found.append((str(Path(path).relative_to(ROOT)), text))
    doc = (ROOT / "docs" / "language.md").read_text()
    for m in re.finditer(r"^```nn\n(.*?)^```", doc, re.S | re.M):
        try:
            plan = compile_text(m.group(1), base_dir=ROOT / "specs").plan
        except Exception:
            continue
        if len(plan_axis_names(plan)) > 1:
            found.append((f"docs/language.md@{doc[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return found


def axes_table() -> list[dict]:
    """Each network on several axes, weights three times their initial size (attention far from
    uniform), float32 and float64: the worst difference of any oracle per case."""
    from nnspec.onnx.verify import CASES, axis_lengths, verify
    rows = []
    # each case's lengths on the first axis (by name: out) / the second (src)
    both = [axis_lengths(["first", "second"], ls) for _, ls in CASES]
    print("| spec | dtype | loops | " + " | ".join(f"{c} {ls['first'].tolist()}/{ls['second'].tolist()}"
                                                   for (c, _), ls in zip(CASES, both)) + " |")
    print("|---|---|---|" + "---|" * len(CASES))
    for name, text in several_axes_specs():
        for dtype in ("float32", "float64"):
            model = Model.from_text(text, vocabs=_vocabs(text), read_data=False, dtype=dtype)
            for p in model.params:
                model.params[p] = model.params[p] * 3
            result = verify(model)
            row = {"spec": name, "dtype": dtype, "loops": result.inventory,
                   "cases": {c: max(w.values()) for c, w in result.by_case.items()}}
            rows.append(row)
            print(f"| {name} | {dtype} | {row['loops']} | "
                  + " | ".join(f"{row['cases'][c]:.1e}" for c, _ in CASES) + " |", flush=True)
    return rows


def _vocabs(text: str) -> dict | None:
    from nnspec.compiler import compile_text
    plan = compile_text(text, base_dir=ROOT / "specs").plan
    return {v.name: 23 for v in plan.inputs + plan.targets
            if (v.integer or v.elem in ("bag", "char_bag")) and not isinstance(v.card, int)} or None


def _row(row: dict) -> str:
    if "error" in row:
        return f"| {row['spec']} | {row['loops']} | error: {row['error'][:120]} |"
    w = row["worst"]
    cells = [f"{w.get(k, float('nan')):.1e}" for k in ("onnxruntime", "reference", "onnxruntime (Scan)",
                                                        "reference (Scan)")]
    return f"| {row['spec']} | {row['loops']} | " + " | ".join(cells) + " |"


def speed(seconds: float = 5.0) -> dict:
    from threadpoolctl import threadpool_limits

    from nnspec.onnx.export import export_model
    from nnspec.onnx.runner import OnnxModel
    model = model_of(str(ROOT / "specs" / "pos_bilstm.nn"), size=20000)
    runner = OnnxModel(export_model(model).model, threads=1)
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(5, 41, 32 * 20))
    batches = []
    for i in range(0, len(lengths), 32):
        lens = lengths[i:i + 32]
        batches.append((rng.integers(2, 20000, (int(lens.max()), len(lens))), lens))
    singles = [(rng.integers(2, 20000, (int(n), 1)), np.array([n])) for n in lengths[::8]]
    out = {}

    def rate(fn, work) -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for ids, lens in work:
                fn(ids, lens)
                done += len(lens)
        return done / (time.perf_counter() - start)

    with threadpool_limits(1):
        for kind, work in (("batches of 32", batches), ("one sentence at a time", singles)):
            out[kind] = {"nnspec": rate(lambda ids, lens: model.forward({"w": ids}, lengths=lens), work),
                         "onnxruntime": rate(lambda ids, lens: runner.run({"w": ids}, lens), work)}
            print(f"{kind}: nnspec {out[kind]['nnspec']:.0f} sentences/s, onnxruntime "
                  f"{out[kind]['onnxruntime']:.0f} sentences/s", flush=True)
    return out


def ewt_accuracy(run: str, spec: str = str(ROOT / "specs" / "pos_bilstm_features.nn"), split: str = "test") -> dict:
    """Accuracy of a trained tagger on a split of its data, by nnspec and by its ONNX export in
    onnxruntime, the same batches; and the tokens whose tags the two disagree on."""
    from nnspec.cli.model_commands import open_trained
    from nnspec.onnx.export import export_model
    from nnspec.onnx.runner import OnnxModel
    from nnspec.train.loop import evaluate, find_heads
    session, _ = open_trained(spec, run, with_data=True)
    model, data, settings = session.model, session.data, session.settings
    exported = export_model(model)
    runner = OnnxModel(exported.model)
    (head,) = find_heads(model)
    output = next(o for o in runner.outputs)
    correct = counted = disagree = 0
    for batch in data.batches(split, settings.batch, dtype=model.dtype):
        feeds = {v.name: batch.arrays[v.name] for v in model.plan.inputs}
        mine = model.run(feeds, batch.lengths, need_loss=False).values[head.pred].argmax(-1)
        theirs = runner.run(feeds, batch.lengths)[output].argmax(-1)
        gold = batch.arrays[head.target]
        valid = (gold >= 0) & (np.arange(gold.shape[0])[:, None] < batch.lengths[None, :])
        correct += int(((theirs == gold) & valid).sum())
        counted += int(valid.sum())
        disagree += int(((theirs != mine) & valid).sum())
    nnspec_accuracy = evaluate(model, data, split, settings).metrics["accuracy"]
    result = {"run": run, "split": split, "tokens": counted, "nnspec": nnspec_accuracy,
              "onnxruntime": correct / counted, "tags that differ": disagree, "loops": exported.inventory()}
    print(f"{split} UPOS accuracy over {counted} words: nnspec {nnspec_accuracy:.4%}, onnxruntime "
          f"{correct / counted:.4%}; {disagree} tags differ", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speed", action="store_true", help="also time onnxruntime against nnspec on the tagger")
    p.add_argument("--no-table", action="store_true", help="skip the per-spec verification")
    p.add_argument("--ewt", metavar="RUN", help="a run of specs/pos_bilstm_features.nn: its EWT test accuracy "
                                                "by nnspec and by onnxruntime")
    p.add_argument("--axes", action="store_true", help="networks on several sequence axes: worst difference per "
                                                       "case, float32 and float64")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    result = {}
    if not args.no_table:
        print("| spec | loops | onnxruntime | reference | onnxruntime (Scan) | reference (Scan) |")
        print("|---|---|---|---|---|---|")
        paths = sorted(glob.glob(str(ROOT / "specs" / "*.nn"))) + sorted(glob.glob(str(ROOT / "bench" / "specs" / "*.nn")))
        result["specs"] = table(paths)
    if args.axes:
        result["axes"] = axes_table()
    if args.speed:
        result["speed"] = speed()
    if args.ewt:
        result["ewt"] = ewt_accuracy(args.ewt)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all("error" not in r for r in result.get("specs", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
