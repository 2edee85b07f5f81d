"""xia-broadcast: push every change of typed documents to the WebSocket clients allowed to see it."""

from .broadcast import Broadcaster
from .core.acl import Acl, AclItem
from .core.schema import DocSchema, FieldSpec, load_schemas
from .document import Document, EmbeddedDocument, field
from .errors import (
    AuthorizationError,
    DocumentError,
    InvalidAclError,
    InvalidCatalogError,
    InvalidScopeError,
    OutOfScopeError,
    SchemaError,
    SubscriptionError,
    XiaBroadcastError,
)

__all__ = [
    "Acl",
    "AclItem",
    "AuthorizationError",
    "Broadcaster",
    "DocSchema",
    "Document",
    "DocumentError",
    "EmbeddedDocument",
    "FieldSpec",
    "InvalidAclError",
    "InvalidCatalogError",
    "InvalidScopeError",
    "OutOfScopeError",
    "SchemaError",
    "SubscriptionError",
    "XiaBroadcastError",
    "field",
    "load_schemas",
]

__version__ = "0.1.0"
