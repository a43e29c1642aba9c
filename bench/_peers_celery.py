"""The Celery app of :mod:`bench.peers`: one task that does nothing, on the queue named by
``BENCH_CELERY_QUEUE``, broker and result backend the Redis of ``BENCH_REDIS_URL``.

The worker is Celery's own command line (``celery -A bench._peers_celery worker ...``); the
callers in the bench's process build the same app with :func:`make_app`.
"""

from __future__ import annotations

import os

from celery import Celery

TASK = "bench.peers.noop"


def make_app(redis_url: str, queue: str) -> Celery:
    """Celery's defaults, but for the queue and a short expiry of the results."""
    app = Celery("bench_peers", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=queue,
        result_expires=600,  # the default is a day: a bench leaves no keys for long
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK, shared=False)  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    return app


app = make_app(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench"),
)
