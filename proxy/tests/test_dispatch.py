"""dispatch.py: each event reaches the same handlers, in the same order, with the same
outcome as under mitmproxy's own AddonManager; only addons without a handler are skipped.

Every test runs the same addons under both managers and compares what they recorded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import types

import pytest
from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy import options as mopts
from mitmproxy.master import Master
from mitmproxy.proxy.layers import http
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import tflow

from agentctl_proxy import dispatch


class Recorder:
    """Records each call as (addon, event, argument id)."""

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log

    def _note(self, event: str, arg: object) -> None:
        self.log.append((self.name, event, id(arg)))


class SyncAddon(Recorder):
    def requestheaders(self, f):
        self._note("requestheaders", f)

    def update(self, flows):
        self._note("update", flows[0])

    def response(self, f):
        self._note("response", f)


class AsyncAddon(Recorder):
    async def requestheaders(self, f):
        await asyncio.sleep(0)
        self._note("requestheaders", f)

    async def response(self, f):
        self._note("response", f)


class Failing(Recorder):
    def requestheaders(self, f):
        self._note("requestheaders", f)
        raise ValueError("boom in requestheaders")


class Halting(Recorder):
    def response(self, f):
        self._note("response", f)
        raise exceptions.AddonHalt


class OptionsBreaker(Recorder):
    def error(self, f):
        self._note("error", f)
        raise exceptions.OptionsError("bad option")


class ModuleNamedLikeAHook(Recorder):
    requestheaders = types.ModuleType("requestheaders")  # as after `from x import requestheaders`


class NotCallable(Recorder):
    server_connect = 42


class Parent(Recorder):
    def __init__(self, name, log):
        super().__init__(name, log)
        self.addons = [SyncAddon(name + ".child", log)]

    def requestheaders(self, f):
        self._note("requestheaders", f)


def _chain(log: list) -> list:
    return [SyncAddon("sync", log), Failing("failing", log), AsyncAddon("async", log),
            ModuleNamedLikeAHook("module", log), Halting("halting", log), SyncAddon("after-halt", log)]


async def _run(kind: str, make_chain, events) -> tuple[list, list[str]]:
    """Run the events through a master whose manager is `kind`; return the calls and the
    messages mitmproxy's safecall logged."""
    master = Master(mopts.Options(), with_termlog=False)
    if kind == "table":
        assert isinstance(dispatch.install(master), dispatch.HandlerTable)
    log: list = []
    master.addons.add(*make_chain(log))
    logged: list[str] = []
    handler = _Collect(logged)
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        for how, event in events:
            if how == "lifecycle":
                await master.addons.handle_lifecycle(event)
            else:
                await master.addons.trigger_event(event)
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
    return log, logged


class _Collect(logging.Handler):
    def __init__(self, into: list) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:  # without object addresses: two runs
        self.into.append(re.sub(r" at 0x[0-9a-f]+", "", record.getMessage()))


def _both(make_chain, events):
    async def main():
        return await _run("stock", make_chain, events), await _run("table", make_chain, events)

    return asyncio.run(main())


def test_same_calls_and_errors_as_mitmproxy_for_flow_events():
    f1, f2 = tflow.tflow(resp=True), tflow.tflow(resp=True)
    events = [("lifecycle", http.HttpRequestHeadersHook(f1)), ("lifecycle", http.HttpResponseHook(f1)),
              ("lifecycle", http.HttpRequestHeadersHook(f2)), ("trigger", http.HttpResponseHook(f2)),
              ("trigger", hooks.RunningHook())]
    (stock, stock_errors), (table, table_errors) = _both(_chain, events)
    assert table == stock
    assert table_errors == stock_errors
    # the comparison is not empty: the failing addon's error was logged, the next addons
    # still ran, AddonHalt stopped the response before "after-halt", update followed
    assert table_errors == ["Addon error: boom in requestheaders"] * 2
    assert ("async", "requestheaders", id(f1)) in table
    assert ("after-halt", "update", id(f1)) in table
    assert ("after-halt", "response", id(f1)) not in table
    assert table.count(("after-halt", "update", id(f1))) == 2
    assert table.count(("after-halt", "update", id(f2))) == 1  # trigger_event sends no update


def test_options_error_propagates_as_under_mitmproxy():
    f = tflow.tflow(err=True)
    for kind in ("stock", "table"):
        with pytest.raises(exceptions.OptionsError):
            asyncio.run(_run(kind, lambda log: [OptionsBreaker("opt", log)], [("lifecycle", http.HttpErrorHook(f))]))


def test_a_non_callable_handler_is_logged_per_event_as_under_mitmproxy():
    data = ServerConnectionHookData(tflow.tserver_conn(), tflow.tclient_conn())
    events = [("lifecycle", hooks.all_hooks["server_connect"](data))] * 2
    (stock, stock_errors), (table, table_errors) = _both(
        lambda log: [NotCallable("nc", log), SyncAddon("s", log)], events)
    assert table == stock
    assert table_errors == stock_errors
    assert len(table_errors) == 2 and "not callable" in table_errors[0]


def test_sub_addons_get_mitmproxy_walk():
    f = tflow.tflow()
    events = [("lifecycle", http.HttpRequestHeadersHook(f))]
    (stock, _), (table, _) = _both(lambda log: [Parent("parent", log), SyncAddon("s", log)], events)
    assert table == stock
    assert ("parent.child", "requestheaders", id(f)) in table


def test_chain_changes_are_seen_at_the_next_event():
    f = tflow.tflow()

    async def scenario(kind: str) -> list:
        master = Master(mopts.Options(), with_termlog=False)
        if kind == "table":
            dispatch.install(master)
        log: list = []
        first, second = SyncAddon("first", log), SyncAddon("second", log)
        master.addons.add(first)
        await master.addons.handle_lifecycle(http.HttpRequestHeadersHook(f))
        master.addons.add(second)  # the table was built without it
        await master.addons.handle_lifecycle(http.HttpRequestHeadersHook(f))
        master.addons.remove(first)
        await master.addons.handle_lifecycle(http.HttpRequestHeadersHook(f))
        master.addons.clear()
        await master.addons.handle_lifecycle(http.HttpRequestHeadersHook(f))
        return log

    stock, table = asyncio.run(scenario("stock")), asyncio.run(scenario("table"))
    assert table == stock
    assert [a for a, e, _ in table if e == "requestheaders"] == ["first", "first", "second", "second"]


def test_an_addon_leaving_during_an_event_lets_the_rest_of_the_chain_run():
    """What runner._Extras and _StartupErrorCheck do: remove themselves from inside a hook."""

    class Leaver(Recorder):
        def __init__(self, name, log, master):
            super().__init__(name, log)
            self.master = master

        def running(self):
            self._note("running", None)
            self.master.addons.remove(self)

    class After(Recorder):
        def running(self):
            self._note("running", None)

    async def scenario(kind: str) -> list:
        master = Master(mopts.Options(), with_termlog=False)
        if kind == "table":
            dispatch.install(master)
        log: list = []
        master.addons.add(Leaver("leaver", log, master), After("after", log))
        await master.addons.trigger_event(hooks.RunningHook())
        await master.addons.trigger_event(hooks.RunningHook())
        return log

    stock, table = asyncio.run(scenario("stock")), asyncio.run(scenario("table"))
    assert table == stock == [("leaver", "running", id(None)), ("after", "running", id(None)),
                              ("after", "running", id(None))]


def test_addons_without_a_handler_are_not_visited():
    """What the table saves: mitmproxy visits every addon for every event (and for the
    update after each flow event); the table only the handlers."""
    f = tflow.tflow(resp=True)
    visits = {"stock": 0}
    original = addonmanager.AddonManager.invoke_addon

    async def counting(self, addon, event):
        visits["stock"] += 1
        return await original(self, addon, event)

    events = [("lifecycle", http.HttpRequestHeadersHook(f)), ("lifecycle", http.HttpRequestHook(f)),
              ("lifecycle", http.HttpResponseHeadersHook(f)), ("lifecycle", http.HttpResponseHook(f))]

    def chain(log):
        return [Recorder("a", log), Recorder("b", log), SyncAddon("handler", log), Recorder("c", log)]

    addonmanager.AddonManager.invoke_addon = counting
    try:
        asyncio.run(_run("stock", chain, events))
        stock = visits["stock"]
        visits["stock"] = 0
        (log, _) = asyncio.run(_run("table", chain, events))
        table = visits["stock"]
    finally:
        addonmanager.AddonManager.invoke_addon = original
    assert stock == 4 * 2 * 4  # four events and their updates, four addons each
    assert table == 0  # no addon in this chain has sub-addons: mitmproxy's walk is not used
    assert [e for _, e, _ in log] == ["requestheaders", "update", "update", "update", "response", "update"]


def test_install_refuses_a_master_that_already_has_addons():
    async def main():
        master = Master(mopts.Options(), with_termlog=False)
        master.addons.add(SyncAddon("s", []))
        with pytest.raises(RuntimeError):
            dispatch.install(master)

    asyncio.run(main())


def test_options_changes_reach_configure_once():
    """The stock manager's options listener is disconnected: configure fires once per change."""

    class Configured(Recorder):
        def load(self, loader):
            loader.add_option("dispatch_test", bool, False, "test option")

        def configure(self, updated):
            if "dispatch_test" in updated:
                self._note("configure", None)

    async def main(kind):
        master = Master(mopts.Options(), with_termlog=False)
        if kind == "table":
            dispatch.install(master)
        log: list = []
        master.addons.add(Configured("c", log))
        master.options.update(dispatch_test=True)
        return log

    assert asyncio.run(main("table")) == asyncio.run(main("stock")) == [("c", "configure", id(None))]
