"""A model's v2 metadata as the front end serves it (`GET /v2/models/{m}`) and validates
requests with: asked of the model's instances, the first that answers, and cached on the
model's routes until its backend changes; without an instance that answers (a model scaled to
zero, or served by the serverless pool alone), read from its artifact by the reader the worker
loads it with (`mark.adapters.artifacts`), so tritonclient users can build requests before the
first instance runs.

The artifact is read in a thread (a file read and a parse: onnxruntime, joblib) and cached on the
routes per artifact spec and version token (the file's mtime and size, or an S3 object's ETag,
as the worker versions them): the token is checked again at most once per `max_age_s` (the
fleet's sync interval, the staleness it already accepts for the models themselves) and the file
read again only when it changed. An artifact that is an S3 object (a model registered from an
S3 store, `worker.store`) is read through the model store's seam (`SpecObjects`, at
`worker.store_endpoint_url`): one HEAD per check, one GET per version. A model with an
external server's model name (`backend.backend_model_name`) has no artifact of Mark's to read."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from frontend.links import ModelRoutes
from mark.adapters.artifacts import MISSING, Signature, read_signature, spec_entry
from mark.adapters.backends import BackendClient, BackendUnavailable
from mark.adapters.model_store import SpecObjects
from mark.core.errors import NotFound
from mark.core.protocol import TensorMeta

__all__ = ["ArtifactMetadata", "artifact_metadata", "fetch_metadata"]

logger = logging.getLogger("mark.frontend.fleet")


async def fetch_metadata(client: BackendClient, routes: ModelRoutes) -> None:
    """Ask the instances that hold the model in memory, in turn; the first valid answer fills
    `routes.metadata` and `routes.inputs`. Nothing changes when none answers (none holds it,
    all failing). An instance that does not hold the model is not asked: a many-model worker
    would load it to answer (or refuse for want of room), a load the front end's residency
    routing did not choose; the artifact answers until one holds it."""
    for link in list(routes.links.values()):
        if not link.routable:
            continue
        try:
            doc = await client.metadata(link.endpoint, routes.backend_name, 2.0)
            inputs = tuple(TensorMeta.from_json(i) for i in doc.get("inputs") or ())
        except (BackendUnavailable, KeyError, TypeError, ValueError) as exc:
            logger.info("metadata of %s from %s failed: %s", routes.model.name, link.id, exc)
            continue
        routes.metadata, routes.inputs = doc, inputs
        return


@dataclass(frozen=True, slots=True)
class ArtifactMetadata:
    """What the front end read of one model's artifact: the spec and version token read, when
    the token was last checked (the fleet's clock), and the signature or why there is none."""

    artifact: str
    version: str
    checked_s: float
    signature: Signature | None
    reason: str = ""

    def to_json(self, name: str) -> dict[str, Any]:
        """The v2 model metadata document (the version a first load of the artifact gets)."""
        assert self.signature is not None
        return {
            "name": name,
            "versions": ["1"],
            "platform": self.signature.platform,
            "inputs": [t.to_json() for t in self.signature.inputs],
            "outputs": [t.to_json() for t in self.signature.outputs],
        }


def _read(
    name: str, artifact: str, known: ArtifactMetadata | None, objects: SpecObjects
) -> ArtifactMetadata:
    """Blocking: the artifact's version (a stat, or a HEAD for an S3 object), and its
    signature unless `known` read this version (an S3 object is fetched to a temporary file
    for it, gone once read: the signature is what is kept)."""
    try:
        remote = objects.head(name, artifact)
    except NotFound as exc:
        return ArtifactMetadata(artifact, MISSING, 0.0, None, f"artifact missing: {exc}")
    except Exception as exc:  # the store unreachable: said, and asked again after max_age_s
        return ArtifactMetadata(artifact, "", 0.0, None, f"model store unreachable: {exc}")
    version = spec_entry(name, artifact).version if remote is None else remote.version
    if known is not None and (known.artifact, known.version) == (artifact, version):
        return known
    try:
        if remote is None:
            return ArtifactMetadata(artifact, version, 0.0, read_signature(artifact))
        with tempfile.TemporaryDirectory(prefix="mark-metadata-") as tmp:
            fetched = objects.fetch(name, artifact, Path(tmp) / Path(remote.key).name)
            assert fetched is not None
            local, got = fetched
            return ArtifactMetadata(artifact, got.version, 0.0, read_signature(local))
    except Exception as exc:  # any unreadable artifact is the model's reason, not a 500
        logger.info("metadata of %s from its artifact %s failed: %s", name, artifact, exc)
        why = "artifact missing" if version == MISSING else "artifact unreadable"
        return ArtifactMetadata(artifact, version, 0.0, None, f"{why}: {exc}")


async def artifact_metadata(
    routes: ModelRoutes, now_s: float, max_age_s: float, objects: SpecObjects
) -> ArtifactMetadata:
    """The model's artifact metadata, cached on `routes.artifact` (see the module docstring);
    `objects` reads an artifact that is an S3 object."""
    backend = routes.model.backend
    known = routes.artifact
    if backend.backend_model_name is not None:
        reason = f"no instance reports the metadata of {backend.backend_model_name!r}"
        return ArtifactMetadata(backend.artifact, "", now_s, None, reason)
    if known is not None and known.artifact == backend.artifact:
        if now_s - known.checked_s < max_age_s:
            return known
    got = await asyncio.to_thread(_read, routes.model.name, backend.artifact, known, objects)
    routes.artifact = replace(got, checked_s=now_s)
    return routes.artifact
