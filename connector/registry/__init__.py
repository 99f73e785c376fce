"""The dev registry: the registry contract (docs/registry-api.yaml) over files and SQLite.

``RegistryServer(data_dir, token=..., host=, port=).start()`` for tests; ``site-connector registry
serve --data DIR`` for people. It is the embedded default push target and the test peer.
"""

from connector.registry.auth import load_or_create_token
from connector.registry.server import Faults, RegistryServer
from connector.registry.storage import RegistryStore

__all__ = ["Faults", "RegistryServer", "RegistryStore", "load_or_create_token"]
