"""Benchmarks of workspace-lifecycle, each measured side by side with its baseline in one run.

Run from the repository root (PostgreSQL parts need the server named by
``WORKSPACE_LIFECYCLE_PG_URL`` or ``--pg-url``; they are skipped when it is unreachable)::

    python -m bench                  # every benchmark (~10 minutes); writes bench/results.json,
                                     # bench/RESULTS.md and bench/wakeup.png
    python -m bench wakeup scale     # some of them (their entries are updated, others kept)
    python -m bench --quick          # the tiny smoke mode (what tests/stores/test_bench_smoke.py runs)
    python -m bench --out DIR        # write the results elsewhere
    python -m bench --compare        # the regression guard: every guarded figure against the
                                     # committed results.json; exit 1 if one is worse than 0.9x

Benchmarks: ``wakeup`` (1. wake-up latency), ``dbwork`` (2. store calls per request against
build duration), ``engine`` (3. pump against bare python-statemachine), ``throughput``
(4. durable events/s against the bare drivers), ``scale`` (5. 10,000 workspaces in one process),
``contention`` (6. 1,000 concurrent starts from 4 processes), ``deadlines`` (8. armed deadlines
and touches), ``replicas`` (9. 1 to 8 replica processes on one PostgreSQL, ~3 minutes; its store
options, e.g. a notification mode, with ``--store-option KEY=VALUE``), ``peers`` (11. the request
cycle, ours on PostgreSQL and SQLite against procrastinate, Celery + Redis and a hand-written
LISTEN/NOTIFY + SKIP LOCKED loop, interleaved rounds, ~3 minutes). The plots
(``wakeup.png``, ``replicas.png``) need matplotlib (the ``bench`` extra). The older
single-purpose scripts (``engine.py``, ``postgres_*.py``) still run on their own.
"""
