"""One error tree: every exception class the package defines is under ``XiaBroadcastError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import xia_broadcast
from xia_broadcast.errors import XiaBroadcastError


def test_every_exception_class_of_the_package_derives_from_the_root() -> None:
    found = []
    for info in pkgutil.walk_packages(xia_broadcast.__path__, "xia_broadcast."):
        if info.name == "xia_broadcast.__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    assert len(found) >= 20  # the walk saw the package's errors (a walk that finds nothing proves nothing)
    outside = sorted(f"{k.__module__}.{k.__qualname__}" for k in found if not issubclass(k, XiaBroadcastError))
    assert outside == []
