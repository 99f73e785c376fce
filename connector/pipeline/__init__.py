"""The study pipeline: what happens to a study once it is stable.

- :mod:`connector.pipeline.stages`: the one list of stages, built from the config;
- :mod:`connector.pipeline.worker`: the worker that leases studies and runs them through it;
- :mod:`connector.pipeline.context`: the stage contract (:class:`~connector.pipeline.context.Stage`);
- one module per stage (``cac_stage``, ``registry_stage``); de-identification is ``connector.deid``.
"""
