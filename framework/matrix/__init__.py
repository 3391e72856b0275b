"""The nightly matrix: kernels x modes x configs, run in parallel, sharded, merged and compared.

    spec.py      the matrix file (ci/nightly.yaml), read with file:line errors
    plan.py      its cells, their order, and shards balanced by last night's durations
    results.py   the typed results (results.json), merge of shards, diff against a baseline
    junit.py     junit.xml: one testsuite per kernel x mode
    html.py      index.html: the grid, failures grouped by crash title, regressions marked
    runner.py    the edge: kernels prepared once, one process group per cell, retries, Ctrl-C
"""
