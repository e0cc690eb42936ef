"""mitmproxy's AddonManager, handing each event only to the addons that handle it.

Stock mitmproxy walks the whole chain for every event, twice per flow event (the hook,
then "update"), and for each addon enters a context manager, starts a coroutine,
walks its sub-addons and rebuilds the event's argument list, whether or not the addon
has a method for the event. With four addons, a keep-alive request is 32 such visits
(tests/test_dispatch.py counts them) for the four handlers agentctl-proxy has.

Here the handlers of each event name are looked up once and kept until the chain
changes (add, remove, clear); a handler method replaced on a live addon is not seen
until then (none of ours is). What a handler sees is unchanged: the same arguments,
chain order, sync and async handlers, AddonHalt stopping the event, OptionsError
passing through, any other exception logged by mitmproxy's own safecall and the next
addon still called. A chain in which some addon has sub-addons (an `addons`
attribute, which may change behind the manager's back) gets mitmproxy's own walk.
"""

from __future__ import annotations

import inspect
import types

from mitmproxy import addonmanager, exceptions, flow, hooks

_Handlers = tuple  # the bound handler methods of one event, in chain order


class HandlerTable(addonmanager.AddonManager):
    def __init__(self, master) -> None:
        super().__init__(master)
        self._handlers: dict[str, _Handlers | None] = {}

    # ------------------------------------------------- what invalidates the table

    def add(self, *addons) -> None:
        super().add(*addons)
        self._handlers = {}

    def remove(self, addon) -> None:
        super().remove(addon)
        self._handlers = {}

    def clear(self) -> None:
        super().clear()
        self._handlers = {}

    # --------------------------------------------------------------- dispatch

    def handlers(self, name: str) -> _Handlers | None:
        """The handlers of an event, or None when the chain needs mitmproxy's walk."""
        try:
            return self._handlers[name]
        except KeyError:
            pass
        found = None if any(hasattr(a, "addons") for a in self.chain) else _handlers_in(self.chain, name)
        self._handlers[name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        funcs = self.handlers(event.name)
        if funcs is None:
            return await super().trigger_event(event)
        if funcs:
            await _call_each(funcs, event.args())
        return None

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        funcs = self.handlers(event.name)
        if funcs is None:
            return await super().handle_lifecycle(event)
        args = event.args()
        if funcs:
            await _call_each(funcs, args)
        if isinstance(args[0], flow.Flow) and self.handlers("update") != ():
            await self.trigger_event(hooks.UpdateHook([args[0]]))
        return None


def _handlers_in(chain: list, name: str) -> _Handlers:
    """What mitmproxy's _iter_hooks finds in a chain without sub-addons."""
    found = []
    for addon in chain:
        func = getattr(addon, name, None)
        if not func or isinstance(func, types.ModuleType):  # `from mitmproxy import log` is no handler
            continue
        found.append(func if callable(func) else _not_callable(name, addon))
    return tuple(found)


def _not_callable(name: str, addon: object):
    def handler(*_args):  # mitmproxy raises this per event, and safecall logs it
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
    return handler


async def _call_each(funcs: _Handlers, args: list) -> None:
    for func in funcs:
        try:
            res = func(*args)
            if res is not None and inspect.isawaitable(res):
                await res
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception:
            _log_addon_error()


def _log_addon_error() -> None:
    """Log the exception being handled exactly as mitmproxy's safecall does."""
    with addonmanager.safecall():
        raise  # re-raised inside safecall, which logs it and swallows it


def install(master) -> HandlerTable:
    """Give a new Master (no addons yet) a HandlerTable in place of its AddonManager."""
    stock = master.addons
    if stock.chain:
        raise RuntimeError("install the handler table before adding addons")
    master.options.changed.disconnect(stock._configure_all)
    master.addons = HandlerTable(master)
    return master.addons
