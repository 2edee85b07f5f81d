"""Authentication of subscribers (API keys, JWT bearer tokens) and of publishers.

* Public mode (no API keys, no JWT key configured): every subscriber is ``Anonymous`` with ``acl=None``.
* API keys: ``_header`` carries ``X-Api-Key`` (and ``X-App-Name`` where the key is bound to an app), as the
  original listener sends them; the key maps to a user name and an ACL in the config.
* JWT (HS256 with a shared secret, RS256 with a public key): ``Authorization: Bearer <token>`` in
  ``_header`` or in the upgrade request's headers. The ACL is the claim ``acl`` (configurable), the user
  name the claim ``sub``. Expired, not-yet-valid, forged or malformed tokens are refused, and so are
  tokens whose ``exp``, ``nbf`` or ``iat`` is not a JSON number (a numeric string included).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ..core.acl import Acl
from ..errors import InvalidAclError, XiaBroadcastError
from .config import Settings

#: claims that are NumericDates (seconds since the epoch)
_NUMERIC_DATES = ("exp", "nbf", "iat")


class AuthError(XiaBroadcastError):
    """Authentication missing or failed (close code 4401; HTTP 401 for publishers)."""


@dataclass(frozen=True)
class Principal:
    """Who a subscriber is: a user name, an ACL (None: unrestricted), whether it may see hidden fields, and,
    for JWTs, the expiry (epoch s)."""

    user_name: str
    acl: Acl | None
    expires_at: float | None = None
    show_hidden: bool = False


#: a public server's subscriber: reads everything, hidden fields too when it asks (as the original)
ANONYMOUS = Principal("Anonymous", None, show_hidden=True)


def _bearer(value: Any) -> str | None:
    if isinstance(value, str) and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def _get(headers: Mapping[str, Any], name: str) -> Any:
    """Case-insensitive header lookup in a plain mapping."""
    lname = name.lower()
    for k, v in headers.items():
        if isinstance(k, str) and k.lower() == lname:
            return v
    return None


class Authenticator:
    """Resolves a handshake's credentials to a :class:`Principal`, per the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: the principal of each configured API key, made once and shared by its subscribers (memory)
        self._key_principals: dict[str, Principal] = {}

    def subscriber(self, header: Mapping[str, Any], upgrade_headers: Mapping[str, Any] | None = None) -> Principal:
        """The principal of a subscriber, from ``_header`` and the upgrade request headers.

        Raises :class:`AuthError` with a reason that says what is missing or wrong.
        """
        s = self.settings
        if not s.authenticated:
            return ANONYMOUS
        token = _bearer(_get(header, "Authorization")) or _bearer(_get(upgrade_headers or {}, "Authorization"))
        if token is not None:
            if not (s.jwt_secret or s.jwt_public_key):
                raise AuthError("bearer tokens are not accepted by this server")
            return self._from_jwt(token)
        api_key = _get(header, "X-Api-Key")
        if api_key is None:
            raise AuthError("App Name or API Key missing for authentication")
        if not isinstance(api_key, str):
            raise AuthError("X-Api-Key must be a string")
        entry = matched = None
        for key, candidate in s.api_keys.items():  # constant-time compare of every configured key
            if hmac.compare_digest(key.encode(), api_key.encode()):
                entry, matched = candidate, key
        if entry is None or matched is None:
            raise AuthError("Authentication Error: unknown API key")
        if entry.app_name is not None and _get(header, "X-App-Name") != entry.app_name:
            raise AuthError("Authentication Error: API key is not valid for this X-App-Name")
        principal = self._key_principals.get(matched)
        if principal is None:
            principal = self._key_principals[matched] = Principal(
                entry.user_name, None if entry.acl is None else Acl.from_display(**entry.acl),
                show_hidden=entry.show_hidden)
        return principal

    def _from_jwt(self, token: str) -> Principal:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        if alg not in s.jwt_algorithms:
            raise AuthError(f"token algorithm {alg!r} is not accepted")
        key = s.jwt_secret if alg.startswith("HS") else s.jwt_public_key
        if not key:
            raise AuthError(f"no key configured for {alg} tokens")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=s.jwt_audience, issuer=s.jwt_issuer,
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        for claim in _NUMERIC_DATES:  # RFC 7519 4.1.4: a NumericDate is a JSON number, never a string
            value = claims.get(claim)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise AuthError(f"invalid token: claim {claim!r} must be a number")
        raw_acl = claims.get(s.jwt_acl_claim)
        if raw_acl is None:
            raise AuthError(f"token carries no {s.jwt_acl_claim!r} claim")
        try:
            acl = Acl.coerce(raw_acl)
        except InvalidAclError as exc:
            raise AuthError(f"token claim {s.jwt_acl_claim!r}: {exc}") from exc
        return Principal(str(claims["sub"]), acl, float(claims["exp"]), claims.get("show_hidden") is True)

    def publisher(self, headers: Mapping[str, Any]) -> None:
        """Check a publisher's key (``X-Publisher-Key`` or ``Authorization: Bearer <key>``).

        Without configured publish keys, publishing is open only when subscribers need no authentication.
        """
        s = self.settings
        given = _get(headers, "X-Publisher-Key") or _bearer(_get(headers, "Authorization"))
        if not s.publish_keys:
            if s.authenticated:
                raise AuthError("publishing is disabled: no publish keys are configured")
            return
        if not isinstance(given, str) or not given:
            raise AuthError("X-Publisher-Key missing")
        ok = False
        for key in s.publish_keys:
            ok |= hmac.compare_digest(key.encode(), given.encode())
        if not ok:
            raise AuthError("unknown publisher key")
