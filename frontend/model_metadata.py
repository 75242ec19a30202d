"""A model's v2 metadata as the front end serves it (`GET /v2/models/{m}`) and validates
requests with: asked of the model's instances, the first that answers, and cached on the
model's routes until its backend changes."""

from __future__ import annotations

import logging

from frontend.links import ModelRoutes
from mark.adapters.backends import BackendClient, BackendUnavailable
from mark.core.protocol import TensorMeta

__all__ = ["fetch_metadata"]

logger = logging.getLogger("mark.frontend.fleet")


async def fetch_metadata(client: BackendClient, routes: ModelRoutes) -> None:
    """Ask the routable instances in turn; the first valid answer fills `routes.metadata` and
    `routes.inputs`. Nothing changes when none answers (no instance, all failing)."""
    for link in list(routes.links.values()):
        if link.ejected:
            continue
        try:
            doc = await client.metadata(link.endpoint, routes.backend_name, 2.0)
            inputs = tuple(TensorMeta.from_json(i) for i in doc.get("inputs") or ())
        except (BackendUnavailable, KeyError, TypeError, ValueError) as exc:
            logger.info("metadata of %s from %s failed: %s", routes.model.name, link.id, exc)
            continue
        routes.metadata, routes.inputs = doc, inputs
        return
