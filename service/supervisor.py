"""Keep BentoML's process supervisor (circus) off TCP: its control socket obeys any command.

`bentoml serve` runs a circus arbiter whose controller and event publisher listen on two random
TCP ports on 127.0.0.1, without authentication. Any local process of any user could send the
controller `{"command": "add", "properties": {"cmd": ..., "start": true}}` and have it run a
program as the service's user (tests/reliability/test_attack_surface.py did, before this fix).
BentoML 1.4.40 has no setting for these endpoints, so the arbiter class it instantiates is
replaced by one that puts both on Unix sockets in a fresh 0700 directory: only the service's
own user can connect, and only the API port listens on the network.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

_PRIVATE = "_seqserve_private_endpoints"


def _private(arbiter_class: type) -> type:
    """`arbiter_class` with its controller and publisher moved to ipc:// sockets."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        directory = tempfile.mkdtemp(prefix="seqserve-supervisor-")  # mode 0700
        kwargs["endpoint"] = f"ipc://{directory}/control"
        kwargs["pubsub_endpoint"] = f"ipc://{directory}/events"
        arbiter_class.__init__(self, *args, **kwargs)
        self.exit_stack.callback(shutil.rmtree, directory, ignore_errors=True)

    return type(arbiter_class.__name__, (arbiter_class,), {"__init__": __init__, _PRIVATE: True})


def use_private_supervisor_sockets() -> None:
    """Make every arbiter `bentoml serve` creates from now on use private Unix sockets.

    Called when the service module is imported, which `bentoml serve` does before it creates
    the arbiter (`create_standalone_arbiter` looks the classes up at call time).
    """
    from bentoml._internal.utils import circus

    for name in ("Arbiter", "ThreadedArbiter"):
        current = getattr(circus, name)
        if not getattr(current, _PRIVATE, False):
            setattr(circus, name, _private(current))
