"""Create or update every JetStream stream as the admin user, then exit: what ``volstream up``
does before starting the services, for deploy/ (the ``nats-provision`` Job). Service users
may not create streams (volstream.bus.permissions); until this has run they exit at start-up
saying so, and Kubernetes restarts them.

    VOLSTREAM_NATS_URL=... VOLSTREAM_NATS_USER=admin VOLSTREAM_NATS_PASSWORD=... \\
        python -m volstream.provision
"""

from __future__ import annotations

import asyncio
import logging

from volstream.config import from_env
from volstream.runtime import provision_streams


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = from_env().validated()
    if cfg.nats_url is None:
        raise SystemExit("no NATS URL: set VOLSTREAM_NATS_URL")
    asyncio.run(
        provision_streams(cfg.nats_url, cfg, user=cfg.nats_user, password=cfg.nats_password)
    )
    logging.getLogger("volstream.provision").info("streams provisioned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
