"""The pure core of xia-broadcast: no I/O, no event loop.

Scope predicates (:mod:`.scope`), catalog projectors (:mod:`.catalog`), ACL matching (:mod:`.acl`),
class schemas (:mod:`.schema`) and the canonical keys that group subscribers into views (:mod:`.viewkey`).
Everything here is deterministic and tested without sockets.
"""
