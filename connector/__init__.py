"""site-connector: the on-premises side of a multicentre cardiac imaging registry.

Pipeline stages, one package each, data flowing one way:
ingest -> assemble -> deid -> infer -> outbox -> push. State lives in :mod:`connector.store`.
"""

__version__ = "0.1.0"
