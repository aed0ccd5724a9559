"""Device credentials: the password file of the embedded broker and its salted hashes.

One line per device, ``device_id:scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`` (salt and hash in
unpadded base64). The id may itself contain ``:`` (MAC ids), so a line is split at its *last*
colon; the hash part never contains one. The parameters are written into each entry so a
later change of cost keeps old entries verifiable. ``#`` comments and blank lines are kept
out of the way (ignored when read, dropped when the file is rewritten by ``pm devices``).

Pure functions and plain file I/O, no trio: the amqtt broker child (asyncio) imports it too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

# scrypt cost: ~85 ms and 16 MiB per verification on the development machine. Device
# passwords that ``pm devices add`` generates carry 192 bits, so the cost only matters for
# passwords chosen by hand; the broker caches successful verifications (see pm.broker.amqtt._auth).
SCRYPT_LOG2_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"

# The gateway passes its own broker password to the broker child in this environment
# variable (never on the command line, where `ps` shows it); the child removes it at once.
GATEWAY_PASSWORD_ENV = "PM_BROKER_GATEWAY_PASSWORD"
# The gateway's username on an embedded broker with auth when mqtt.username is empty: '$' is
# not allowed in device ids, so no device can ever be named like the gateway.
DEFAULT_GATEWAY_USERNAME = "$puppetmaster"


class PasswordFileError(Exception):
    """The password file is malformed; the message names the file and line."""


def secret_digest(secret: str) -> bytes:
    """SHA-256 of a secret (token, password): comparing digests with
    :func:`hmac.compare_digest` takes the same time whatever the secret's length."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str) -> str:
    """Return the self-describing salted scrypt hash of ``password`` (random salt)."""
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    parameters = f"{SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}"
    return f"{_SCHEME}${parameters}${_b64encode(salt)}${_b64encode(digest)}"


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=1 << log2_n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=_HASH_BYTES,
    )


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded`` (from :func:`hash_password`).

    Error handling: a malformed or unknown-scheme entry verifies nothing (returns False)
    rather than raising: the broker must refuse, not crash, on a damaged line.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _b64decode(parts[4]), _b64decode(parts[5])
        if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        actual = _scrypt(password, salt, log2_n, r, p)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def generate_password() -> str:
    """A random device password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def read_password_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return ``{device_id: encoded hash}`` from the file; a missing file is empty.

    Error handling: raises :class:`PasswordFileError` naming the line for a line without a
    ``:`` or with an empty id or hash.
    """
    entries: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        device, separator, encoded = line.rpartition(":")
        if not separator or not device or not encoded:
            raise PasswordFileError(f"{path}:{number}: expected device_id:hash")
        entries[device] = encoded
    return entries


def write_password_file(path: str | os.PathLike[str], entries: dict[str, str]) -> None:
    """Replace the file atomically with ``entries``, sorted, readable by its owner only.

    Written to a temporary file in the same directory and renamed, so a broker reading it
    meanwhile sees the old or the new file, never half of one.
    """
    target = Path(path)
    lines = "".join(f"{device}:{entries[device]}\n" for device in sorted(entries))
    descriptor, temporary = tempfile.mkstemp(dir=target.parent or ".", prefix=".passwd-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(lines)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
