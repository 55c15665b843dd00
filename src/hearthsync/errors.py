"""One root exception and a small tree under it.

``LocalError`` is raised when the caller broke a rule (bad input, wrong state); ``RemoteError``
when another device or a file we did not write did (a malformed frame, a corrupt document). A
remote error closes the offending connection or skips the offending document, never the process.
"""

from __future__ import annotations


class HearthError(Exception):
    """Root of every error hearthsync raises on purpose."""


class LocalError(HearthError):
    """The caller broke a rule: nothing was changed."""


class ValidationError(LocalError, ValueError):
    """A record failed validation at the edge.  ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BlockedFieldError(ValidationError):
    """A record tried to store a blocked category of personal data (email, phone, ...)."""


class NotFoundError(LocalError, KeyError):
    """The requested user, document or record does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence
        return str(self.args[0]) if self.args else "not found"


def unknown_user(user: str, *, forgotten: bool = False) -> str:
    """What a `NotFoundError` for a user the household does not have says, wherever it is
    raised (Python, the CLI, the HTTP API).  A forgotten user is not told to be added again,
    which `add_user` refuses (found by a new user)."""
    from hearthsync.model.pii import quoted  # the model imports this module

    if forgotten:
        return f"user {quoted(user)} was forgotten; a returning person needs a new id"
    return (
        f"unknown user {quoted(user)}: add them first (Peer.add_user, or 'user ID NAME' on "
        "the console of 'hearth run')"
    )


class ClosedError(LocalError):
    """The peer or store was used after it was closed."""


class RemoteError(HearthError):
    """Input from outside the process (a peer, a file on disk) was invalid."""


class CorruptDocumentError(RemoteError):
    """A stored document could not be decoded; ``doc_id`` names it."""

    def __init__(self, doc_id: str, reason: str) -> None:
        super().__init__(f"document {doc_id!r} is corrupt: {reason}")
        self.doc_id = doc_id
        self.reason = reason


class StoreError(HearthError):
    """The SQLite store failed (disk full, locked, wrong format version)."""


class StoreInUseError(StoreError):
    """Another peer, in this process or another, holds the folder (`hearthsync.store.lock`)."""

    def __init__(self, folder: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process, or this one"
        super().__init__(
            f"{folder} is in use by another peer ({holder}): two peers must never hold one "
            "store; stop it first, or ask it through its HTTP API if it serves one"
        )
        self.folder = folder
        self.pid = pid


class ProtocolError(RemoteError):
    """A peer sent a frame that breaks the wire protocol (protocol/SPEC.md §5-§6).

    ``code`` is the number sent back in the ``ERROR`` frame before the connection is closed.
    """

    def __init__(self, message: str, *, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


class CryptoError(RemoteError):
    """A certificate, signature, key grant or envelope failed verification (SPEC §3-§4)."""


class CertificateError(CryptoError):
    """A certificate is malformed, forged, expired, of another household, or revoked."""


class OverreachError(CertificateError):
    """A certificate its issuer could not give: scopes beyond the issuer's own, or an admin
    certified by an admin (SPEC §3).  Not a matter of time: it will never verify."""


class SignatureError(CryptoError):
    """A signature does not verify."""


class DecryptionError(CryptoError):
    """A ciphertext does not decrypt with the key it claims (tampered, or the key is gone)."""


class UnknownKeyError(DecryptionError):
    """A signed envelope opens with none of the keys held for its slot: its author sealed it
    under a key not granted to this device (yet)."""


class MissingKeyError(LocalError):
    """This device holds no key for that scope, user or epoch."""
