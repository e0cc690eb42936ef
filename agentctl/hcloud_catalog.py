"""What Hetzner Cloud offers: locations and the server types sold in each. The one
table every check and default uses (validation, the program's defaults, docs/cloud.md).

Hetzner changes its line-up (cx22 and the other Gen2 CX types were deprecated on
2025-10-16 and removed in early 2026; CX and CAX are sold in the EU locations only), and
the API is the authority: `hcloud server-type list`, `GET /v1/datacenters`
(`server_types.supported`). When Hetzner adds or retires a type, change this table, its
test (tests/test_hcloud_catalog.py) and the table in docs/cloud.md together.
"""
from __future__ import annotations

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


def network_zone(location: str) -> str:
    """Raises ValueError for a location Hetzner does not have; the caller names the key."""
    try:
        return LOCATIONS[location]
    except KeyError:
        raise ValueError(f"{location!r} is not a Hetzner location") from None


def default_server_type(location: str) -> str:
    return DEFAULT_SERVER_TYPE[location]


def check_server_type(server_type: str, location: str) -> None:
    """Raises ValueError (what is wrong) when server_type cannot be created in location."""
    if server_type not in SERVER_TYPES:
        why = "was retired by Hetzner" if server_type in RETIRED else "is not a Hetzner server type"
        raise ValueError(f"{server_type!r} {why}")
    if location not in SERVER_TYPES[server_type]:
        raise ValueError(f"{server_type!r} is not sold in {location} (only in {', '.join(SERVER_TYPES[server_type])})")


def types_in(location: str) -> list[str]:
    return [t for t, where in SERVER_TYPES.items() if location in where]


def problems(deployment) -> list[tuple[str, str, str]]:
    """The validator hook: every (key path under `agentctl:`, what is wrong, what is
    expected) for a Hetzner deployment's location and server types; [] when all is
    well or the deployment is not on Hetzner. Pure: callers turn the first one into
    their one-line error (ConfigError(source, f"agentctl:{path}", what, expected))."""
    if deployment.cloud != "hcloud":
        return []
    location = deployment.region
    if location not in LOCATIONS:
        return [("region", f"{location!r} is not a Hetzner location", f"one of {', '.join(LOCATIONS)}")]
    sized = [("proxy.size", deployment.proxy.size)] + [(f"agents[{i}].size", a.size)
                                                       for i, a in enumerate(deployment.agents)]
    found = []
    for path, size in sized:
        if size is None:
            continue
        try:
            check_server_type(size, location)
        except ValueError as exc:
            found.append((path, str(exc), f"a server type sold in {location}: {', '.join(types_in(location))}"))
    return found
