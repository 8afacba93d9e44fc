"""Benchmarks for webfones-relay: each figure measured beside its baseline, in the same run.

``python -m bench`` runs the full suite (about five minutes on two cores) and writes
``docs/BENCHMARKS.md`` with PNG plots; ``python -m bench --smoke`` runs tiny sizes without
thresholds (CI) and writes to ``bench/out/``. Every relay, receiver and baseline client runs in
its own process (see :mod:`bench.worker` and :mod:`bench.rx`); this package's parent process only
orchestrates, hosts the simulated WebFones API where a measurement needs one, and reports.
"""
