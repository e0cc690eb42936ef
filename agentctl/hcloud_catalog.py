"""What Hetzner Cloud offers: locations and the server types sold in each. The one
table every check and default uses (validation, the program's defaults, docs/cloud.md).

The API is the authority, and validation uses it whenever HCLOUD_TOKEN is set
(`live_catalogue`: hcloud-python's `server_types.get_all()`, whose `locations[]` say per
location whether a type is deprecated or available there, the API shape since
docs.hetzner.cloud/changelog#2025-09-24-per-location-server-types, as hcloud-python
2.x's hcloud/server_types/domain.py ServerTypeLocation reads it; and
`locations.get_all()` for each location's network zone). Offline it uses the static
table below, and every message says which one it used.

The static table: the names are Hetzner's API names as hcloud-python returns them; the
set was taken from public stacks and docs that use them (cx23/cx33/cx43 in fsn1, nbg1,
hel1; cpx22.. in the EU, cpx11.. in ash/hil/sin) and from Hetzner's announcement that
the Gen2 CX types (cx22..cx52) were deprecated on 2025-10-16; it is NOT checked against
Hetzner's own list from here (no API access on the build machine). When Hetzner adds or
retires a type, change this table, its test (tests/test_hcloud_catalog.py) and the table
in docs/cloud.md together.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

EU = ("fsn1", "nbg1", "hel1")
US_AP = ("ash", "hil", "sin")

# location -> network zone (a network's subnets must be in its servers' zone)
LOCATIONS = {"fsn1": "eu-central", "nbg1": "eu-central", "hel1": "eu-central",
             "ash": "us-east", "hil": "us-west", "sin": "ap-southeast"}

# server type -> the locations that sell it
SERVER_TYPES: dict[str, tuple[str, ...]] = {
    # Cost-optimized, shared vCPU (Intel/AMD): EU only
    **{t: EU for t in ("cx23", "cx33", "cx43", "cx53")},
    # Arm64 (Ampere), shared vCPU: EU only
    **{t: EU for t in ("cax11", "cax21", "cax31", "cax41")},
    # Regular performance, shared vCPU (AMD): the EU generation and the US/Singapore one
    **{t: EU for t in ("cpx22", "cpx32", "cpx42", "cpx52", "cpx62")},
    **{t: US_AP for t in ("cpx11", "cpx21", "cpx31", "cpx41", "cpx51")},
    # Dedicated vCPU (AMD): everywhere
    **{t: EU + US_AP for t in ("ccx13", "ccx23", "ccx33", "ccx43", "ccx53", "ccx63")},
}

# The smallest type that runs a proxy or an agent comfortably (2 vCPU, 4 GB), per location.
# Outside the EU: ccx13 (2 dedicated vCPU, 8 GB), the type sold in every location.
DEFAULT_SERVER_TYPE = {**{loc: "cx23" for loc in EU}, **{loc: "ccx13" for loc in US_AP}}

RETIRED = {"cx11", "cx21", "cx31", "cx41", "cx51", "cx22", "cx32", "cx42", "cx52"}


STATIC_SOURCE = "agentctl's built-in list (set HCLOUD_TOKEN to check against the Hetzner API)"
LIVE_SOURCE = "the Hetzner API"


@dataclass(frozen=True)
class Catalogue:
    server_types: dict[str, tuple[str, ...]]   # type -> locations that sell it
    locations: dict[str, str]                  # location -> network zone
    source: str                                # which one this is, for messages


def static_catalogue() -> Catalogue:
    return Catalogue(SERVER_TYPES, LOCATIONS, STATIC_SOURCE)


@functools.lru_cache(maxsize=4)
def live_catalogue(token: str, endpoint: str | None) -> Catalogue:
    """What the project's token sees now. A type counts as sold in a location when the
    API lists it there without a deprecation and not marked unavailable."""
    from hcloud import Client

    client = Client(token=token, **({"api_endpoint": endpoint} if endpoint else {}),
                    application_name="agentctl")
    locations = {loc.name: loc.network_zone for loc in client.locations.get_all()}
    types = {st.name: tuple(where.location.name for where in (st.locations or [])
                            if where.deprecation is None and where.available is not False)
             for st in client.server_types.get_all()}
    return Catalogue(types, locations, LIVE_SOURCE)


def catalogue(environ=os.environ) -> Catalogue:
    """The live catalogue with a token (HCLOUD_TOKEN, HCLOUD_ENDPOINT as the hcloud CLI
    reads them), else the static one. An API that cannot be reached (offline) leaves the
    static one, and the messages say so; an API that answers with an error (a bad token)
    is the caller's one-line error."""
    import requests  # hcloud-python's transport

    token = environ.get("HCLOUD_TOKEN")
    if not token:
        return static_catalogue()
    try:
        return live_catalogue(token, environ.get("HCLOUD_ENDPOINT"))
    except requests.ConnectionError:
        return Catalogue(SERVER_TYPES, LOCATIONS, "agentctl's built-in list (the Hetzner API could not be reached)")


def network_zone(location: str) -> str:
    """Raises ValueError for a location Hetzner does not have; the caller names the key."""
    try:
        return LOCATIONS[location]
    except KeyError:
        raise ValueError(f"{location!r} is not a Hetzner location") from None


def default_server_type(location: str) -> str:
    return DEFAULT_SERVER_TYPE[location]


def check_server_type(server_type: str, location: str, cat: Catalogue | None = None) -> None:
    """Raises ValueError (what is wrong) when server_type cannot be created in location."""
    cat = cat or static_catalogue()
    if server_type not in cat.server_types:
        why = "was retired by Hetzner" if server_type in RETIRED else "is not a Hetzner server type"
        raise ValueError(f"{server_type!r} {why}")
    where = cat.server_types[server_type]
    if location not in where:
        raise ValueError(f"{server_type!r} is not sold in {location} (only in {', '.join(where) or 'no location'})")


def types_in(location: str, cat: Catalogue | None = None) -> list[str]:
    return [t for t, where in (cat or static_catalogue()).server_types.items() if location in where]


def problems(deployment, cat: Catalogue | None = None) -> list[tuple[str, str, str]]:
    """The validator hook: every (key path under `agentctl:`, what is wrong, what is
    expected) for a Hetzner deployment's location and server types (an unset size: its
    default), checked against `cat` (default: `catalogue()`), whose source each message
    names; [] when all is well or the deployment is not on Hetzner. Callers turn the
    first one into their one-line error (ConfigError(source, f"agentctl:{path}", ...))."""
    if deployment.cloud != "hcloud":
        return []
    cat = cat or catalogue()
    location, said = deployment.region, f"(checked against {cat.source})"
    if location not in cat.locations:
        return [("region", f"{location!r} is not a Hetzner location {said}", f"one of {', '.join(cat.locations)}")]
    sized = [("proxy.size", deployment.proxy.size)] + [(f"agents[{i}].size", a.size)
                                                       for i, a in enumerate(deployment.agents)]
    found = []
    for path, size in sized:
        try:
            check_server_type(size or default_server_type(location), location, cat)
        except (ValueError, KeyError) as exc:
            what = str(exc) if size else f"is unset, and its default {default_server_type(location)!r}: {exc}"
            found.append((path, f"{what} {said}", f"a server type sold in {location}: "
                          f"{', '.join(types_in(location, cat))}"))
    return found
