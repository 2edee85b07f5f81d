"""Server settings: defaults, a TOML file, ``XIA_BROADCAST_*`` environment variables, command-line flags.

Later sources override earlier ones in that order. Each setting is declared once, as a field of
:class:`Settings` made by :func:`setting`: its default, TOML section and key, unit, bounds, flag and one line
of documentation. Everything else is derived from those declarations: the keys :func:`apply_toml` accepts,
the variables :func:`apply_env` accepts (``XIA_BROADCAST_<ATTRIBUTE>``), the bounds :func:`check` enforces,
the ``serve`` flags of the CLI, and the settings table of ``docs/configuration.md`` (printed by
``python -m xia_broadcast.server.config``).
"""

# setting() and section_setting() return dataclasses.field(default_factory=...) for lists and dicts, so a
# default is never shared between instances (which is what RUF009 guards against):
# ruff: noqa: RUF009

from __future__ import annotations

import copy
import functools
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from ..core.acl import Acl
from ..core.limits import DEFAULT_LIMITS, SubscriptionLimits
from ..core.schema import DocSchema, load_schemas
from ..core.versions import DEFAULT_MAX_TRACKED_IDS
from ..errors import InvalidAclError, SchemaError, XiaBroadcastError
from ..fanout import DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_MESSAGES, DEFAULT_MAX_TOTAL_QUEUE_BYTES
from ..journal.memory import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT, DEFAULT_MAX_TOTAL_BYTES
from ..journal.store import DEFAULT_STORE_MAX_BYTES, DEFAULT_STORE_MAX_DOCUMENTS, DEFAULT_STORE_MAX_TOTAL_BYTES

T = TypeVar("T")
V = TypeVar("V")

#: every environment variable of a setting starts with it
ENV_PREFIX = "XIA_BROADCAST_"
#: the environment variable naming the config file (read by :func:`load_settings`, not a setting)
CONFIG_ENV = "XIA_BROADCAST_CONFIG"

_METADATA_KEY = "xia_broadcast.setting"


class ConfigError(XiaBroadcastError, ValueError):
    """The configuration file, an environment variable or a flag is invalid; the message names it."""


# -- declarations ----------------------------------------------------------------------------------------


Check = Callable[[Any], str | None]
"""A custom check of one setting's value: None when it is fine, else what is wrong ("must ..., not ...").
Its docstring's first line says what is allowed (shown in the settings table)."""


@dataclass(frozen=True)
class Declaration:
    """One setting, declared once by :func:`setting` (or :func:`section_setting`) on a field of
    :class:`Settings`; ``name`` and ``type`` are filled in from that field (see :data:`DECLARATIONS`)."""

    #: TOML section (``[server]``)
    section: str
    #: key in that section; "" for a setting that is a whole section (``[api_keys]``, ``[classes]``)
    key: str
    #: one line: what it means (shown in the settings table and in the flag's help)
    doc: str
    default: Any
    #: what a number counts: "seconds", "bytes", ... ("" when the doc line says it)
    unit: str = ""
    #: inclusive bounds of a number
    minimum: float | None = None
    maximum: float | None = None
    #: the values a string may take (compared ignoring case when ``ignore_case``)
    choices: tuple[str, ...] = ()
    ignore_case: bool = False
    check: Check | None = None
    #: the ``serve`` command-line flag that sets it
    flag: str | None = None
    #: a second key of the section whose value is the path of a file holding this setting's value
    file_key: str | None = None
    #: reads a whole section into this setting's value (merged into the current one)
    load: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    #: the attribute of :class:`Settings`
    name: str = ""
    #: its annotation (``int``, ``str | None``, ``list[str]``, ...)
    type: Any = None

    @property
    def env_name(self) -> str | None:
        """``XIA_BROADCAST_<NAME>``; None for a whole section (not settable from the environment)."""
        return None if self.load is not None else ENV_PREFIX + self.name.upper()

    @property
    def label(self) -> str:
        """The name used in messages: the attribute, and the file key when it differs."""
        if self.load is not None:
            return f"{self.name} ([{self.section}])"
        return self.name if self.key == self.name else f"{self.name} ([{self.section}] {self.key})"

    @property
    def base_type(self) -> Any:
        """The type without ``| None``."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        if typing.get_origin(self.type) in (typing.Union, types.UnionType) and len(args) == 1:
            return args[0]
        return self.type

    def from_toml(self, value: Any) -> Any:
        """The value of a TOML key, checked against the declared type (an integer is also a float)."""
        base = self.base_type
        ok = {bool: isinstance(value, bool),
              int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool),
              str: isinstance(value, str)}.get(base)
        if ok is None and typing.get_origin(base) is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok or (base is float and math.isnan(value)):
            raise ConfigError(f"[{self.section}] {self.key}: invalid value {value!r} (expected {self.expected})")
        return float(value) if base is float else list(value) if isinstance(value, list) else value

    def from_text(self, text: str, source: str) -> Any:
        """The value of the environment variable ``source``: lists are comma-separated (empty items
        dropped), booleans 1/true/yes/on or 0/false/no/off (any case)."""
        base = self.base_type
        try:
            if base is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(text)
            if base is int:
                return int(text)
            if base is float:
                number = float(text)
                if math.isnan(number):
                    raise ValueError(text)
                return number
            if typing.get_origin(base) is list:
                return [v.strip() for v in text.split(",") if v.strip()]
            return text
        except ValueError:
            raise ConfigError(f"{self.name}: invalid value {text!r} in {source} (expected {self.expected})") from None

    @property
    def expected(self) -> str:
        base = self.base_type
        if typing.get_origin(base) is list:
            return "a list of strings (comma-separated in the environment)"
        return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, str(base))

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` by this declaration's bounds, choices and check; None if nothing."""
        if value is None:
            return None
        low, high = self.minimum, self.maximum
        unit = f" {self.unit}" if self.unit else ""
        if low is not None and high is not None and not low <= value <= high:
            return f"must be between {_number(low)} and {_number(high)}{unit}, not {value!r}"
        if low is not None and not value >= low:
            return f"must be at least {_number(low)}{unit}, not {value!r}"
        if high is not None and not value <= high:
            return f"must be at most {_number(high)}{unit}, not {value!r}"
        if self.choices:
            given = value.upper() if self.ignore_case else value
            if given not in self.choices:
                return f"must be {_alternatives(self.choices)}, not {value!r}"
        return self.check(value) if self.check is not None else None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _alternatives(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def setting(default: T, section: str, doc: str, *, key: str | None = None, unit: str = "",
            minimum: float | None = None, maximum: float | None = None, choices: tuple[str, ...] = (),
            ignore_case: bool = False, check: Check | None = None, flag: str | None = None,
            file_key: str | None = None) -> T:
    """Declare a setting: a dataclass field of :class:`Settings` defaulting to ``default`` (copied for each
    instance when it is a list), read from ``[section] key`` (``key`` defaults to the attribute name) and
    from ``XIA_BROADCAST_<ATTRIBUTE>``."""
    declared = Declaration(section, key or "", doc, default, unit, minimum, maximum, choices, ignore_case, check,
                           flag, file_key)
    metadata = {_METADATA_KEY: declared}
    if isinstance(default, list):
        return field(default_factory=functools.partial(copy.copy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section_setting(section: str, doc: str, load: Callable[[Mapping[str, Any]], dict[str, V]]) -> dict[str, V]:
    """Declare a setting that is a whole TOML section, read by ``load`` (no environment variable)."""
    declared = Declaration(section, "", doc, {}, load=load)
    return field(default_factory=dict, metadata={_METADATA_KEY: declared})


# -- custom checks (their docstring is the "allowed" column of the settings table) -----------------------


def _absolute_path(value: str) -> str | None:
    """starts with `/`"""
    return None if value.startswith("/") else f"must start with '/', not {value!r}"


def _redis_url(value: str) -> str | None:
    """`redis://`, `rediss://` or `unix://` URL"""
    if value.startswith(("redis://", "rediss://", "unix://")):
        return None
    return f"must start with redis://, rediss:// or unix://, not {value!r}"


def _not_blank(value: str) -> str | None:
    """not blank"""
    return None if value.strip() else "is empty: remove it, or set a real one"


def _no_empty_item(value: list[str]) -> str | None:
    """no empty item"""
    return None if all(value) else f"cannot hold an empty value: {value!r}"


# -- the whole sections ----------------------------------------------------------------------------------


@dataclass
class ApiKey:
    """An API key as the original's listener sends it in ``_header`` (``X-Api-Key``, ``X-App-Name``)."""

    user_name: str
    acl: dict[str, Any] | None
    app_name: str | None = None
    #: may subscribe with ``show_hidden`` (hidden fields)
    show_hidden: bool = False


def _load_api_keys(table: Mapping[str, Any]) -> dict[str, ApiKey]:
    keys: dict[str, ApiKey] = {}
    for key, spec in table.items():
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
        keys[key] = ApiKey(spec["user_name"], dict(acl) if acl is not None else None, spec.get("app_name"),
                           show_hidden)
    return keys


def _load_classes(table: Mapping[str, Any]) -> dict[str, DocSchema]:
    try:
        return load_schemas({"classes": table})
    except SchemaError as exc:
        raise ConfigError(f"[classes]: {exc}") from exc


# -- the settings ----------------------------------------------------------------------------------------

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class Settings:
    """Everything the server needs. Units: seconds for times, bytes for sizes. Each field is one declaration
    (see :func:`setting`); ``docs/configuration.md`` shows them as a table."""

    host: str = setting("127.0.0.1", "server", "address to listen on; 0.0.0.0: every IPv4 interface",
                        flag="--host")
    port: int = setting(8765, "server", "TCP port to listen on; 0: any free port", minimum=0, flag="--port")
    path: str = setting("/ws", "server", "URL path of the WebSocket endpoint", check=_absolute_path)
    handshake_timeout: float = setting(
        10.0, "server", "WebSocket: time for the first message (then close 4400); HTTP: time for a whole request",
        unit="seconds", minimum=0)
    max_message_size: int = setting(
        64 * 1024, "server", "largest inbound WebSocket message; a larger one closes the connection with 1009",
        unit="bytes", minimum=1)
    max_publish_size: int = setting(
        8 * 1024 * 1024, "server", "largest body of a POST /publish; a larger one is answered 413", unit="bytes",
        minimum=1)
    max_connections: int = setting(
        20_000, "server", "WebSockets at once; one more is closed with 4503 (lowered at start to fit the file "
        "descriptor limit)", minimum=1)
    max_http_connections: int = setting(
        1024, "server", "sockets at once not (yet) upgraded to WebSocket; one more is answered 503 and closed "
        "unread", minimum=1)
    max_body_bytes: int = setting(
        64 * 1024 * 1024, "server", "request bodies being received at once, over every connection (each counts "
        "its Content-Length); past it 503. At least max_publish_size", unit="bytes", minimum=1)
    max_outbound_bytes: int = setting(
        256 * 1024 * 1024, "server", "handed to WebSockets and not yet sent, over all of them; a socket past its "
        "share is not written and its subscribers continue from the journal once it drains", unit="bytes",
        minimum=1)
    max_write_delay: float = setting(
        0.002, "server", "how long a queued message may wait, while changes keep coming, to share a write with "
        "later ones; 0: never waits", unit="seconds", minimum=0, maximum=1)
    origin_allowlist: list[str] = setting(
        [], "server", "Origin values a WebSocket upgrade may carry besides the server's own (a page it served); "
        "\"*\": any; another Origin is answered 403 (requests without Origin, not from browsers, pass)")
    allowed_hosts: list[str] = setting(
        [], "server", "host names the Host header of a request may carry (standalone server); \"*\": any; empty: "
        "localhost, 127.0.0.1 and [::1] when listening on loopback, any otherwise; another is answered 403")
    client_frame_burst: int = setting(
        64, "server", "frames a WebSocket client may send at once (handshake, pings, pongs, token refreshes); "
        "past the burst and client_frame_rate it is closed with 4408", unit="frames", minimum=1)
    client_frame_rate: float = setting(
        10.0, "server", "frames per second a WebSocket client may send on average, after its burst",
        unit="frames/s", minimum=0)
    max_subscriptions: int = setting(32, "server", "classes in one handshake; more closes with 4429", minimum=1)
    ping_interval: float = setting(20.0, "server", "time between two pings of a connection; 0: no pings",
                                   unit="seconds", minimum=0)
    ping_timeout: float = setting(20.0, "server", "silence after a ping before a connection is dropped",
                                  unit="seconds", minimum=0)
    queue_messages: int = setting(
        DEFAULT_MAX_QUEUE_MESSAGES, "server", "a connection's outbound queue bound; past it the subscriber "
        "continues from the journal", unit="messages", minimum=1)
    queue_bytes: int = setting(
        DEFAULT_MAX_QUEUE_BYTES, "server", "a connection's outbound queue bound, in encoded messages; past it the "
        "subscriber continues from the journal", unit="bytes", minimum=1)
    max_queued_bytes: int = setting(
        DEFAULT_MAX_TOTAL_QUEUE_BYTES, "server", "encoded messages queued for all connections together, each "
        "counting those it holds (a message shared by many counts for each); past it, a connection holding "
        "messages continues from the journal, as when its own queue is full", unit="bytes", minimum=1)
    gc_freeze_interval: float = setting(
        1.0, "server", "longest time between two moves of the objects that survived the garbage collector's "
        "young generations out of its full passes (gc.freeze), so that no full pass walks every connection; "
        "shorter while a move's young collection takes over 5 ms; 0: the collector as Python sets it",
        unit="seconds", minimum=0)
    shutdown_timeout: float = setting(5.0, "server", "time to flush queues on SIGTERM/SIGINT before closing "
                                      "with 1001", unit="seconds", minimum=0)
    log_format: str = setting("auto", "server", "log lines as JSON objects or as text; auto: text when the "
                              "log goes to a terminal, JSON otherwise (a file, a pipe, a log collector)",
                              choices=("auto", "json", "text"), flag="--log-format")
    log_level: str = setting("INFO", "server", "least severe level logged", choices=_LOG_LEVELS,
                             ignore_case=True)
    allow_undeclared_classes: bool = setting(
        False, "server", "accept subscriptions to classes that no schema declares (checked at delivery, as the "
        "original)")
    show_hidden_requires_grant: bool = setting(
        True, "server", "on an authenticated server, hidden fields only for keys and tokens granted show_hidden; "
        "false: anyone may ask, as the original")

    max_scope_conditions: int = setting(DEFAULT_LIMITS.max_conditions, "limits",
                                        "conditions in one data_scope; more closes with 4420", minimum=1)
    max_scope_path_depth: int = setting(DEFAULT_LIMITS.max_path_depth, "limits",
                                        "parts of a dotted path (a.b.c is 3); more closes with 4420", minimum=1)
    max_scope_in_values: int = setting(DEFAULT_LIMITS.max_in_values, "limits",
                                       "values in one in / not in list; more closes with 4420", minimum=1)
    max_scope_value_length: int = setting(
        DEFAULT_LIMITS.max_value_length, "limits", "characters of a field path or a string value in a scope (a "
        "list or object value counted as JSON); more closes with 4420", minimum=1)
    max_catalog_depth: int = setting(DEFAULT_LIMITS.max_catalog_depth, "limits",
                                     "nesting of a catalog (a top-level field is depth 1); deeper closes with "
                                     "4421", minimum=1)
    max_catalog_fields: int = setting(DEFAULT_LIMITS.max_catalog_fields, "limits",
                                      "names in a catalog, at every depth; more closes with 4421", minimum=1)

    journal_max_count: int = setting(DEFAULT_MAX_COUNT, "journal", "changes retained per class", key="max_count",
                                     minimum=0)
    journal_max_age: float = setting(DEFAULT_MAX_AGE, "journal", "how long a change is retained", key="max_age",
                                     unit="seconds", minimum=0)
    journal_max_bytes: int = setting(DEFAULT_MAX_BYTES, "journal",
                                     "encoded changes retained per class (memory and SQLite journals)",
                                     key="max_bytes", unit="bytes", minimum=1)
    journal_max_total_bytes: int = setting(
        DEFAULT_MAX_TOTAL_BYTES, "journal", "encoded changes retained over all classes, the oldest of any class "
        "dropped first (memory and SQLite journals)", key="max_total_bytes", unit="bytes", minimum=1)
    data: str | None = setting(
        None, "journal", "the data directory: the journal is kept in a SQLite file there and survives restarts "
        "and crashes (docs/configuration.md, \"The durable journal\"); unset: in memory, lost at each restart",
        key="path", check=_not_blank, flag="--data")
    journal_durability: str = setting(
        "os", "journal", "with a data directory: a publish is acknowledged once its commit is in the operating "
        "system (os: survives the process being killed) or synced to disk (disk: survives a power loss)",
        key="durability", choices=("os", "disk"))
    max_tracked_ids: int = setting(
        DEFAULT_MAX_TRACKED_IDS, "journal", "last versions remembered per class, to find scope exits when a "
        "publisher gives no previous state and the class's document store was refused; 0: none", minimum=0)
    store_max_documents: int = setting(
        DEFAULT_STORE_MAX_DOCUMENTS, "journal", "documents kept per class in the document store (the latest state "
        "of each, for snapshots and scope exits); past it the class's store is dropped and its snapshots refused "
        "(4413)", minimum=0)
    store_max_bytes: int = setting(
        DEFAULT_STORE_MAX_BYTES, "journal", "bytes of documents (their change records) kept per class in the "
        "document store; past it the class's store is dropped and its snapshots refused (4413)", unit="bytes",
        minimum=0)
    store_max_total_bytes: int = setting(
        DEFAULT_STORE_MAX_TOTAL_BYTES, "journal", "bytes of documents kept in the document store over every class "
        "(memory and SQLite journals; Redis: bound it with maxmemory); the class whose change passes it has its "
        "store dropped and its snapshots refused (4413)", unit="bytes", minimum=0)

    redis_url: str | None = setting(
        None, "redis", "cluster mode: the Redis server whose streams carry every change, e.g. "
        "redis://127.0.0.1:6379/0 (docs/cluster.md); unset: the embedded memory journal", key="url",
        check=_redis_url, flag="--redis")
    redis_prefix: str = setting("xia:", "redis", "prefix of every Redis key of this deployment", key="prefix")

    jwt_secret: str | None = setting(None, "jwt", "HS256 shared secret of JWT bearer tokens", key="secret",
                                     check=_not_blank)
    jwt_public_key: str | None = setting(
        None, "jwt", "RS256 public key (PEM) of JWT bearer tokens; public_key_file: the path of a file holding it",
        key="public_key", check=_not_blank, file_key="public_key_file")
    jwt_algorithms: list[str] = setting(["HS256", "RS256"], "jwt", "algorithms a token may be signed with",
                                        key="algorithms")
    jwt_acl_claim: str = setting("acl", "jwt", "the claim holding a token's ACL", key="acl_claim")
    jwt_audience: str | None = setting(None, "jwt", "audience (aud) a token must name; unset: not checked",
                                       key="audience")
    jwt_issuer: str | None = setting(None, "jwt", "issuer (iss) a token must name; unset: not checked",
                                     key="issuer")

    api_keys: dict[str, ApiKey] = section_setting(
        "api_keys", "API key -> user_name, acl, app_name, show_hidden (as the original listener sends them in "
        "_header)", _load_api_keys)
    publish_keys: list[str] = setting(
        [], "publish", "X-Publisher-Key values that may POST /publish; empty: publishing is open on a server "
        "without authentication, closed on one with", key="keys", check=_no_empty_item)
    classes: dict[str, DocSchema] = section_setting(
        "classes", "document classes: name -> key, privilege_keys, fields", _load_classes)

    demo: bool = setting(False, "demo", "add the demo class Order and publish a stream of changes of it",
                         key="enabled", flag="--demo")
    demo_rate: float = setting(5.0, "demo", "demo changes published per second", key="rate", minimum=0)

    def subscription_limits(self) -> SubscriptionLimits:
        """The subscription limits these settings give."""
        return SubscriptionLimits(self.max_scope_conditions, self.max_scope_path_depth, self.max_scope_in_values,
                                  self.max_scope_value_length, self.max_catalog_depth, self.max_catalog_fields)

    @property
    def authenticated(self) -> bool:
        """True when subscribers must authenticate (API keys or JWT configured)."""
        return bool(self.api_keys or self.jwt_secret or self.jwt_public_key)


def _declarations() -> tuple[Declaration, ...]:
    hints = typing.get_type_hints(Settings)
    found = []
    for f in fields(Settings):
        declared = f.metadata.get(_METADATA_KEY)
        if not isinstance(declared, Declaration):
            raise TypeError(f"Settings.{f.name} is not declared with setting() or section_setting()")
        key = "" if declared.load is not None else declared.key or f.name
        found.append(replace(declared, name=f.name, key=key, type=hints[f.name]))
    return tuple(found)


#: every setting, in the order of :class:`Settings`
DECLARATIONS: tuple[Declaration, ...] = _declarations()
_BY_NAME = {d.name: d for d in DECLARATIONS}
_BY_ENV = {d.env_name: d for d in DECLARATIONS if d.env_name is not None}
#: section -> key -> (declaration, True when the key names a file holding the value)
_KEYS: dict[str, dict[str, tuple[Declaration, bool]]] = {}
#: section -> the declaration that is the whole section
_WHOLE_SECTIONS = {d.section: d for d in DECLARATIONS if d.load is not None}
for _d in DECLARATIONS:
    if _d.load is None:
        _KEYS.setdefault(_d.section, {})[_d.key] = (_d, False)
        if _d.file_key is not None:
            _KEYS[_d.section][_d.file_key] = (_d, True)
del _d


def declaration(name: str) -> Declaration:
    """The declaration of the setting ``name`` (an attribute of :class:`Settings`)."""
    return _BY_NAME[name]


# -- sources ---------------------------------------------------------------------------------------------


def apply_toml(settings: Settings, data: Mapping[str, Any]) -> None:
    """Apply a parsed config file (see ``docs/configuration.md``) onto ``settings``."""
    known = sorted(set(_KEYS) | set(_WHOLE_SECTIONS))
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}; known: {known}")
    for section, table in data.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table")
        whole = _WHOLE_SECTIONS.get(section)
        if whole is not None and whole.load is not None:
            getattr(settings, whole.name).update(whole.load(table))
            continue
        keys = _KEYS[section]
        extra = set(table) - set(keys)
        if extra:
            raise ConfigError(f"[{section}]: unknown settings {sorted(extra)}; known: {sorted(keys)}")
        for key, value in table.items():
            decl, names_a_file = keys[key]
            if names_a_file:
                try:
                    value = Path(value).read_text(encoding="utf-8")
                except (OSError, TypeError) as exc:
                    raise ConfigError(f"[{section}] {key}: cannot read {value!r}: {exc}") from exc
            setattr(settings, decl.name, decl.from_toml(value))
    if data.get("jwt") and not (settings.jwt_secret or settings.jwt_public_key):
        raise ConfigError("[jwt] needs a secret (HS256) or a public_key / public_key_file (RS256)")


def apply_env(settings: Settings, environ: Mapping[str, str]) -> None:
    """Apply ``XIA_BROADCAST_<SETTING>`` variables (e.g. ``XIA_BROADCAST_PORT=9000``); lists are
    comma-separated. Any other ``XIA_BROADCAST_*`` variable but ``XIA_BROADCAST_CONFIG`` is refused."""
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        decl = _BY_ENV.get(key)
        if decl is None:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(sorted([*_BY_ENV, CONFIG_ENV]))})")
        setattr(settings, decl.name, decl.from_text(value, key))


def load_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Defaults, then the TOML file (``config_file`` or ``$XIA_BROADCAST_CONFIG``), then the environment,
    then ``overrides`` (command-line flags; a None value means "not given"); then :func:`check`."""
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or env.get(CONFIG_ENV)
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
        if k not in _BY_NAME:
            raise ConfigError(f"{k}: unknown setting (known: {', '.join(sorted(_BY_NAME))})")
        if v is not None:
            setattr(settings, k, v)
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, or that would open the server by accident: each declaration's
    bounds, choices and check, then the few that relate two settings."""
    for decl in DECLARATIONS:
        problem = decl.problem(getattr(settings, decl.name))
        if problem is not None:
            raise ConfigError(f"{decl.label} {problem}")
    if settings.max_body_bytes < settings.max_publish_size:
        raise ConfigError(f"max_body_bytes ({settings.max_body_bytes}) must hold at least one body of "
                          f"max_publish_size ({settings.max_publish_size})")
    if settings.data is not None and settings.redis_url is not None:
        raise ConfigError("data (a SQLite journal on this node) and redis_url (the journal in Redis) exclude each "
                          "other: cluster mode keeps the journal in Redis")


# -- documentation ---------------------------------------------------------------------------------------


def default_text(decl: Declaration, *, toml: bool = True) -> str:
    """The default as it would be written in the file (``toml``) or on a command line; "unset" for None."""
    value = decl.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if toml else value
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, dict):
        return "empty"
    return str(value)


def _mebibytes(value: int) -> str:
    for size, name in ((1024 * 1024, "MiB"), (1024, "KiB")):
        if value >= size and value % size == 0:
            return f" ({value // size} {name})"
    return ""


def allowed_text(decl: Declaration) -> str:
    """The bounds, choices and check of a declaration, in words."""
    parts = []
    if decl.minimum is not None and decl.maximum is not None:
        parts.append(f"{_number(decl.minimum)} to {_number(decl.maximum)}")
    elif decl.minimum is not None:
        parts.append(f"≥ {_number(decl.minimum)}")
    elif decl.maximum is not None:
        parts.append(f"≤ {_number(decl.maximum)}")
    if decl.choices:
        parts.append(", ".join(f"`{c}`" for c in decl.choices) + (" (any case)" if decl.ignore_case else ""))
    if decl.check is not None and decl.check.__doc__:
        parts.append(decl.check.__doc__.strip().splitlines()[0])
    return "; ".join(parts)


def settings_table() -> str:
    """Every setting as a Markdown table (pasted into ``docs/configuration.md``; a test compares them)."""
    rows = ["| setting | file | environment, flag | default | allowed | meaning |",
            "|---|---|---|---|---|---|"]
    for d in DECLARATIONS:
        where = f"`[{d.section}]`" if d.load is not None else f"`[{d.section}] {d.key}`"
        if d.file_key:
            where += f" or `{d.file_key}`"
        sources = ", ".join(f"`{s}`" for s in (d.env_name, d.flag) if s) or "(file only)"
        default = default_text(d)
        if d.default is not None and not isinstance(d.default, dict):
            default = f"`{default}`"
        if d.unit:
            default += f" {d.unit}"
        if d.unit == "bytes" and isinstance(d.default, int):
            default += _mebibytes(d.default)
        cells = [f"`{d.name}`", where, sources, default, allowed_text(d), d.doc]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
