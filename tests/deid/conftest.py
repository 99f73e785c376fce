from __future__ import annotations

import pytest

from connector.deid.engine import DeidEngine
from connector.deid.provider import EphemeralIdentityProvider

SECRET = bytes(range(32))


@pytest.fixture
def provider() -> EphemeralIdentityProvider:
    return EphemeralIdentityProvider(site_id="SITE01", secret=SECRET)


@pytest.fixture
def engine(provider: EphemeralIdentityProvider) -> DeidEngine:
    return DeidEngine.from_rules(None, provider, fsync=False)
