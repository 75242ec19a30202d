"""Inference keys: what a key covers, how its secret is made, kept and checked.

A key's scope is one model, a group of models (an `fnmatch` pattern on the model name, matched
case-sensitively as model names are lower-case) or all models. A model is protected when any
key covers it, live, expired or revoked alike: revoking a leaked key, or letting one run out,
shuts out its holder and never opens the model to everyone else.

The secret is `mk_` and 32 bytes from `secrets` (256 bits, URL-safe base64). It is shown once,
when the key is made; the database keeps its SHA-256 and the first `PREFIX_CHARS` characters
(so that an operator can tell keys apart in a listing). SHA-256 without salt or stretching,
rather than scrypt or PBKDF2: those exist to slow a guesser down on secrets people choose, whose
entropy is small; against 256 random bits a guesser has nothing to try but the whole space, so a
salt or a work factor adds no safety, while scrypt's ~50 ms per check would be paid on every
inference request (and make each unauthenticated request a cheap way to burn a front end's CPU).
A presented secret is hashed once and compared with each candidate digest by
`hmac.compare_digest`, so the time taken says nothing about how much of a digest matched.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mark.core.types import MODEL_NAME_PATTERN

__all__ = [
    "ModelScope",
    "GroupScope",
    "AllScope",
    "KeyScope",
    "InferenceKey",
    "StoredKey",
    "GROUP_PATTERN",
    "KEY_ID_PATTERN",
    "LABEL_PATTERN",
    "PREFIX_CHARS",
    "digest",
    "issue",
    "find",
]

SECRET_PREFIX = "mk_"
PREFIX_CHARS = 8  # "mk_" and 5 characters of the secret's 43: 30 of its 256 bits
# The characters of a model name and fnmatch's `* ? [ ] !`, at most twice a name's length.
GROUP_PATTERN = r"^[a-z0-9._*?!\[\]-]{1,127}$"
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]{0,200}$"  # printable: PostgreSQL text refuses NUL


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelScope(_Value):
    """One model, by name (registered or not yet: a key made first protects it from the start)."""

    kind: Literal["model"]
    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]

    def covers(self, model: str) -> bool:
        return model == self.name


class GroupScope(_Value):
    """Every model whose name matches `pattern` (`fnmatch`: `resnet-*`, `team-[ab].*`)."""

    kind: Literal["group"]
    pattern: Annotated[str, Field(pattern=GROUP_PATTERN)]

    def covers(self, model: str) -> bool:
        return fnmatchcase(model, self.pattern)


class AllScope(_Value):
    """Every model."""

    kind: Literal["all"]

    def covers(self, model: str) -> bool:
        return True


KeyScope = Annotated[ModelScope | GroupScope | AllScope, Field(discriminator="kind")]


class InferenceKey(_Value):
    """A key as the admin API lists it: everything but the secret and its digest. Times are
    epoch seconds; `last_used_at_s` is written by the front ends once per sync interval."""

    id: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    prefix: str
    scope: KeyScope
    label: Annotated[str, Field(pattern=LABEL_PATTERN)] | None = None
    created_at_s: float
    expires_at_s: float | None = None
    last_used_at_s: float | None = None
    revoked_at_s: float | None = None

    def refusal(self, now_s: float) -> Literal["expired", "revoked"] | None:
        """Why the key opens nothing at `now_s`, None while it is valid."""
        if self.revoked_at_s is not None:
            return "revoked"
        if self.expires_at_s is not None and now_s >= self.expires_at_s:
            return "expired"
        return None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the database holds it: the listed value and the SHA-256 of its secret (hex)."""

    key: InferenceKey
    digest: str


def digest(secret: str) -> str:
    """SHA-256 of `secret`, hex. A header's non-UTF-8 bytes reach here as surrogates (Sanic
    decodes headers so), which surrogateescape turns back into the bytes that were sent."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def issue(
    scope: ModelScope | GroupScope | AllScope,
    *,
    now_s: float,
    expires_in_s: float | None = None,
    label: str | None = None,
) -> tuple[str, StoredKey]:
    """A new key: its secret (to be shown once) and what is stored of it."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = InferenceKey(
        id=secrets.token_hex(8),
        prefix=secret[:PREFIX_CHARS],
        scope=scope,
        label=label,
        created_at_s=now_s,
        expires_at_s=None if expires_in_s is None else now_s + expires_in_s,
    )
    return secret, StoredKey(key, digest(secret))


def find(candidates: Iterable[StoredKey], secret: str) -> StoredKey | None:
    """The candidate whose digest is the secret's, by constant-time comparisons."""
    presented = digest(secret)
    found = None
    for stored in candidates:
        if hmac.compare_digest(presented, stored.digest):
            found = stored
    return found
