"""The random-spec differential tester (issue 9): thousands of random valid specs must agree
across independent oracles, the way Csmith tests C compilers.

* ``generator.py``: seeded random valid specs from a small typed model;
* ``oracles.py``: one spec checked by every oracle (fast/reference runtime, optimised/unoptimised
  plan, finite differences, PyTorch via ``torch_oracle.py`` when present, padded batch/each
  sequence alone, repeated passes; for an encoder-decoder, greedy decoding and beam 1 against
  decoding one example at a time);
* ``known.py``: known bugs by name, each with its minimal spec;
* ``shrink.py``: a failing spec shrunk to a small one that fails the same oracle;
* ``campaign.py`` and ``__main__.py``: a seed range, summarised;
  ``python -m tests.difftest --count 20000 --seed-start 0``.

``tests/test_difftest.py`` runs 500 specs by default and 20,000 with ``--runslow``.
"""
