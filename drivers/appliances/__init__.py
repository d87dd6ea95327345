"""Smart-appliance drivers for trigger actions: one small module per kind of device.

Every module of this package (but `base`) is imported on first use; a module registers its driver
class with ``@register``. A new driver is one file::

    from drivers.appliances import register
    from drivers.appliances.base import ApplianceDriver

    @register
    class MyPlug(ApplianceDriver):
        name = "myplug"
        async def switch(self, session, address, channel, on): ...

Drivers never import agent/.
"""

from __future__ import annotations

import importlib
import pkgutil

from drivers.appliances.base import COMMANDS, ApplianceDriver, ApplianceError

__all__ = ["COMMANDS", "ApplianceDriver", "ApplianceError", "driver", "names", "register"]

_DRIVERS: dict[str, ApplianceDriver] = {}
_loaded = False


def register(cls: type[ApplianceDriver]) -> type[ApplianceDriver]:
    if not cls.name or cls.name in _DRIVERS:
        raise ValueError(f"appliance driver name {cls.name!r} is empty or taken")
    _DRIVERS[cls.name] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def names() -> list[str]:
    _load()
    return sorted(_DRIVERS)


def driver(name: str) -> ApplianceDriver | None:
    _load()
    return _DRIVERS.get(name)
