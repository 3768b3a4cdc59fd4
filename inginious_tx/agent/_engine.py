"""Engine calls the Docker agent makes in a hurry (blocking: run them in the backend's threads).

The SDK's ``client.containers.create`` creates a container and then reads it
back (an inspect) to build a ``Container`` object the agent never uses: one
engine call of the five or six a job costs.  :func:`thd_create` converts the
same arguments as the SDK does and creates the container only.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["thd_create"]


def thd_create(client: Any, config: Dict[str, Any]) -> str:
    """Create a container from ``client.containers.create`` arguments; its id."""
    try:
        from docker.models.containers import _create_container_args
    except ImportError:  # an SDK without it: the two-call way
        return str(client.containers.create(**config).id)
    args = dict(config)
    args["version"] = client.api.api_version
    return str(client.api.create_container(**_create_container_args(args))["Id"])
