"""Pushing de-identified studies, results and events to the central registry.

Entry points (the daemon calls these):

* :func:`~connector.push.queueing.queue_study` after de-identification: subject PUT, STOW-RS batches, manifest POST.
* :func:`~connector.push.queueing.queue_result` (CAC results) and :func:`~connector.push.queueing.queue_event` (follow-up events).
* :class:`~connector.push.worker.PushWorker` drains the outbox: ``PushWorker(config, store, layout).start()`` / ``.stop()``.
"""
