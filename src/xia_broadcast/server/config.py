"""Server settings: defaults, a TOML file, ``XIA_BROADCAST_*`` environment variables, command-line flags.

Later sources override earlier ones in that order. Every setting is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.acl import Acl
from ..core.limits import DEFAULT_LIMITS, SubscriptionLimits
from ..core.schema import DocSchema, load_schemas
from ..errors import InvalidAclError, SchemaError
from ..fanout import DEFAULT_MAX_QUEUE_BYTES as DEFAULT_QUEUE_BYTES
from ..fanout import DEFAULT_MAX_QUEUE_MESSAGES as DEFAULT_QUEUE_MESSAGES


class ConfigError(ValueError):
    """The configuration file or an environment variable is invalid."""


@dataclass
class ApiKey:
    """An API key as the original's listener sends it in ``_header`` (``X-Api-Key``, ``X-App-Name``)."""

    user_name: str
    acl: dict[str, Any] | None
    app_name: str | None = None
    #: may subscribe with ``show_hidden`` (hidden fields)
    show_hidden: bool = False


@dataclass
class Settings:
    """Everything the server needs. Units: seconds for times, bytes for sizes."""

    host: str = "127.0.0.1"
    port: int = 8765
    path: str = "/ws"
    handshake_timeout: float = 10.0
    #: largest inbound WebSocket message; a larger one closes the connection with 1009
    max_message_size: int = 64 * 1024
    #: largest body of a POST /publish
    max_publish_size: int = 8 * 1024 * 1024
    #: WebSockets at once; one more is closed with 4503 (lowered at start to what the fd limit allows)
    max_connections: int = 20_000
    #: sockets at once that have not upgraded to WebSocket (HTTP requests, keep-alive, upgrades under way);
    #: one more is answered 503 and closed before anything of it is read
    max_http_connections: int = 1024
    #: bytes of request bodies being received at once, over every connection (each counts its declared
    #: Content-Length); a body that would pass it is answered 503 and the connection closed, unread
    max_body_bytes: int = 64 * 1024 * 1024
    #: bytes handed to sockets and not yet sent, over every WebSocket; past it nothing more is written and
    #: subscribers continue from the journal once their sockets drain (as when their queue overflows)
    max_outbound_bytes: int = 256 * 1024 * 1024
    #: Origin header values a WebSocket upgrade may carry; empty: any. Another Origin is answered 403
    origin_allowlist: list[str] = field(default_factory=list)
    #: seconds a queued message may wait to be written together with later ones while changes keep coming
    #: (adaptive write coalescing: after a lull this long it is written during the fan-out); 0: never waits
    max_write_delay: float = 0.002
    max_subscriptions: int = 32
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: each connection's outbound queue bound, in messages and in bytes
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    shutdown_timeout: float = 5.0
    #: journal retention per class: changes kept and their age in seconds
    journal_max_count: int = 100_000
    journal_max_age: float = 3600.0
    #: memory journal: bytes retained per class and in total (encoded changes)
    journal_max_bytes: int = 64 * 1024 * 1024
    journal_max_total_bytes: int = 256 * 1024 * 1024
    #: last versions remembered per class, to find scope exits when a publisher gives no previous state
    max_tracked_ids: int = 100_000
    #: cluster mode: the Redis server whose streams carry every change (None: the embedded memory journal)
    redis_url: str | None = None
    #: the prefix of every Redis key of this deployment
    redis_prefix: str = "xia:"
    log_format: str = "json"
    log_level: str = "INFO"
    #: API key value -> ApiKey
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: list[str] = field(default_factory=lambda: ["HS256", "RS256"])
    jwt_acl_claim: str = "acl"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: keys that may POST /publish; empty: publishing is open when the server runs without authentication
    publish_keys: list[str] = field(default_factory=list)
    classes: dict[str, DocSchema] = field(default_factory=dict)
    #: accept subscriptions to classes that no schema declares (checked at delivery, as the original)
    allow_undeclared_classes: bool = False
    demo: bool = False
    demo_rate: float = 5.0
    #: on an authenticated server, hidden fields (show_hidden, or a scope naming a hidden field) only for
    #: keys and tokens granted show_hidden; false restores the original (anyone may ask)
    show_hidden_requires_grant: bool = True
    #: what one subscription may cost (docs/configuration.md, "Subscription limits"); the defaults are the
    #: core's (``core.limits.SubscriptionLimits``)
    max_scope_conditions: int = DEFAULT_LIMITS.max_conditions
    max_scope_path_depth: int = DEFAULT_LIMITS.max_path_depth
    max_scope_in_values: int = DEFAULT_LIMITS.max_in_values
    max_scope_value_length: int = DEFAULT_LIMITS.max_value_length
    max_catalog_depth: int = DEFAULT_LIMITS.max_catalog_depth
    max_catalog_fields: int = DEFAULT_LIMITS.max_catalog_fields

    def subscription_limits(self) -> SubscriptionLimits:
        """The subscription limits these settings give."""
        return SubscriptionLimits(self.max_scope_conditions, self.max_scope_path_depth, self.max_scope_in_values,
                                  self.max_scope_value_length, self.max_catalog_depth, self.max_catalog_fields)

    @property
    def authenticated(self) -> bool:
        """True when subscribers must authenticate (API keys or JWT configured)."""
        return bool(self.api_keys or self.jwt_secret or self.jwt_public_key)


_SECTIONS = {
    "server": {"host", "port", "path", "handshake_timeout", "max_message_size", "max_publish_size",
               "max_connections", "max_http_connections", "max_body_bytes", "max_outbound_bytes",
               "max_write_delay", "origin_allowlist", "max_subscriptions", "ping_interval", "ping_timeout",
               "queue_messages", "queue_bytes", "shutdown_timeout", "log_format", "log_level",
               "allow_undeclared_classes", "show_hidden_requires_grant"},
    "limits": {"max_scope_conditions", "max_scope_path_depth", "max_scope_in_values", "max_scope_value_length",
               "max_catalog_depth", "max_catalog_fields"},
    "journal": {"max_count", "max_age", "max_bytes", "max_total_bytes", "max_tracked_ids"},
    "redis": {"url", "prefix"},
    "jwt": {"secret", "public_key", "public_key_file", "algorithms", "acl_claim", "audience", "issuer"},
    "publish": {"keys"},
    "demo": {"enabled", "rate"},
}


def _coerce(name: str, current: Any, value: Any) -> Any:
    """Convert a raw value (TOML or environment string) to the type of the setting it replaces."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if isinstance(current, int) and not isinstance(current, bool):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            raise ValueError(value)
        if current is None or isinstance(current, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: invalid value {value!r}") from exc
    raise ConfigError(f"{name}: cannot be set this way")


def _set(settings: Settings, name: str, value: Any) -> None:
    setattr(settings, name, _coerce(name, getattr(settings, name), value))


def apply_toml(settings: Settings, data: Mapping[str, Any]) -> None:
    """Apply a parsed config file (see ``docs/configuration.md``) onto ``settings``."""
    known = set(_SECTIONS) | {"api_keys", "classes"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; known: {sorted(known)}")
    for section, names in _SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        extra = set(table) - names
        if extra:
            raise ConfigError(f"[{section}]: unknown settings {sorted(extra)}")
        for k, v in table.items():
            if section in ("server", "limits"):
                _set(settings, k, v)
            elif section == "jwt":
                if k == "public_key_file":
                    try:
                        settings.jwt_public_key = Path(v).read_text(encoding="utf-8")
                    except (OSError, TypeError) as exc:
                        raise ConfigError(f"[jwt] public_key_file: cannot read {v!r}: {exc}") from exc
                else:
                    _set(settings, f"jwt_{k}", v)
            elif section == "journal":
                _set(settings, k if k == "max_tracked_ids" else f"journal_{k}", v)
            elif section == "redis":
                _set(settings, f"redis_{k}", v)
            elif section == "publish":
                _set(settings, "publish_keys", v)
            elif section == "demo":
                _set(settings, "demo" if k == "enabled" else "demo_rate", v)
    if data.get("jwt") and not (settings.jwt_secret or settings.jwt_public_key):
        raise ConfigError("[jwt] needs a secret (HS256) or a public_key / public_key_file (RS256)")
    keys = data.get("api_keys", {})
    if not isinstance(keys, Mapping):
        raise ConfigError("[api_keys] must be a table of key -> {user_name, acl, app_name}")
    for key, spec in keys.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("user_name"), str):
            raise ConfigError(f"[api_keys.{key!r}] needs a string user_name")
        acl = spec.get("acl")
        if acl is not None and not (isinstance(acl, Mapping) and isinstance(acl.get("content"), list)):
            raise ConfigError(f"[api_keys.{key!r}] acl must be {{content = [{{obj, act}}, ...]}}")
        if acl is not None:
            try:
                Acl.coerce(acl)
            except InvalidAclError as exc:
                raise ConfigError(f"[api_keys.{key!r}] acl: {exc}") from exc
        if not key:
            raise ConfigError("[api_keys]: an API key cannot be empty")
        show_hidden = spec.get("show_hidden", False)
        if not isinstance(show_hidden, bool):
            raise ConfigError(f"[api_keys.{key!r}] show_hidden must be true or false")
        settings.api_keys[key] = ApiKey(spec["user_name"], dict(acl) if acl is not None else None,
                                        spec.get("app_name"), show_hidden)
    if "classes" in data:
        try:
            settings.classes.update(load_schemas({"classes": data["classes"]}))
        except SchemaError as exc:
            raise ConfigError(f"[classes]: {exc}") from exc


_ENV_NAMES = {f.name for f in fields(Settings)} - {"api_keys", "classes"}


def apply_env(settings: Settings, environ: Mapping[str, str]) -> None:
    """Apply ``XIA_BROADCAST_<SETTING>`` variables (e.g. ``XIA_BROADCAST_PORT=9000``)."""
    for key, value in environ.items():
        if not key.startswith("XIA_BROADCAST_") or key == "XIA_BROADCAST_CONFIG":
            continue
        name = key.removeprefix("XIA_BROADCAST_").lower()
        if name not in _ENV_NAMES:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(sorted(_ENV_NAMES))})")
        _set(settings, name, value)


def load_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Defaults, then the TOML file (``config_file`` or ``$XIA_BROADCAST_CONFIG``), then the environment,
    then ``overrides`` (command-line flags; a None value means "not given")."""
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get("XIA_BROADCAST_CONFIG")
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        apply_toml(settings, raw)
    apply_env(settings, env)
    for k, v in overrides.items():
        if v is not None:
            setattr(settings, k, v)
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, or that would open the server by accident."""
    if settings.redis_url is not None and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis url must start with redis://, rediss:// or unix://, not {settings.redis_url!r}")
    if not settings.path.startswith("/"):
        raise ConfigError(f"path must start with '/': {settings.path!r}")
    if settings.jwt_secret is not None and not settings.jwt_secret.strip():
        raise ConfigError("jwt secret is empty: remove it, or set a real secret")
    if settings.jwt_public_key is not None and not settings.jwt_public_key.strip():
        raise ConfigError("jwt public key is empty: remove it, or set a real key")
    if any(not k for k in settings.publish_keys):
        raise ConfigError("publish keys cannot be empty")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {settings.log_level!r}")
    if settings.max_body_bytes < settings.max_publish_size:
        raise ConfigError(f"max_body_bytes ({settings.max_body_bytes}) must hold at least one body of "
                          f"max_publish_size ({settings.max_publish_size})")
    if settings.log_format not in ("json", "text"):
        raise ConfigError(f"log_format must be json or text, not {settings.log_format!r}")
    if not 0 <= settings.max_write_delay <= 1:
        raise ConfigError(f"max_write_delay must be between 0 and 1 (seconds), not {settings.max_write_delay}")
    for name in ("port", "max_message_size", "max_publish_size", "max_connections", "max_subscriptions",
                 "queue_messages", "queue_bytes", "journal_max_count", "journal_max_bytes",
                 "journal_max_total_bytes", "max_http_connections", "max_body_bytes",
                 "max_outbound_bytes", "max_scope_conditions", "max_scope_path_depth", "max_scope_in_values",
                 "max_scope_value_length", "max_catalog_depth", "max_catalog_fields"):
        if getattr(settings, name) < (0 if name in ("port", "journal_max_count") else 1):
            raise ConfigError(f"{name} must be positive, not {getattr(settings, name)}")
