"""A push worker in its own process, until the outbox is drained: the victim of the kill -9 test.

    python -m tests.push.pusher --data DIR --url URL --token-file F [--bandwidth BYTES_PER_S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connector.config import load_config
from connector.push.worker import PushWorker
from connector.store.layout import SiteLayout
from connector.site_db import open_state


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--bandwidth", type=int, default=0)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    config = load_config(None, {
        "SITE_CONNECTOR__STORAGE__DATA_DIR": str(args.data), "SITE_CONNECTOR__REGISTRY__URL": args.url,
        "SITE_CONNECTOR__REGISTRY__TOKEN_FILE": str(args.token_file),
        "SITE_CONNECTOR__REGISTRY__BANDWIDTH_LIMIT": str(args.bandwidth),
        "SITE_CONNECTOR__REGISTRY__CONCURRENCY": "2", "SITE_CONNECTOR__REGISTRY__POLL_SECONDS": "0.1",
        "SITE_CONNECTOR__REGISTRY__BACKOFF_MIN_SECONDS": "0.2", "SITE_CONNECTOR__REGISTRY__BACKOFF_MAX_SECONDS": "2"})
    layout = SiteLayout.from_config(config)
    store = open_state(layout.state_db)
    worker = PushWorker(config, store, layout)
    worker.start()
    drained = worker.drain(300)
    worker.stop()
    store.close()
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
