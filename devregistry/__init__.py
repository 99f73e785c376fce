"""The dev registry: the registry contract (docs/registry-api.yaml) over files and SQLite.

A test and demo peer, not part of the connector: it lives beside ``connector/`` so that nothing in
the product imports it (only ``site-connector registry serve`` starts it), and it shares the
connector's durable-write helpers (:mod:`connector.store.durable`) instead of copying them.

``RegistryServer(data_dir, token=..., host=, port=).start()`` for tests; ``site-connector registry
serve --data DIR`` for people. It is the embedded default push target and the test peer.
"""

from devregistry.auth import load_or_create_token
from devregistry.server import Faults, RegistryServer
from devregistry.storage import RegistryStore

__all__ = ["Faults", "RegistryServer", "RegistryStore", "load_or_create_token"]
