"""Plan-time imports of the AWS provider SDK: only the resource modules the program uses.

`import pulumi_aws.ec2` executes a package __init__ that imports every one of its ~180
resource modules (each builds typed Args classes), about 0.7 s of a 3 s `agentctl plan`;
the program uses seven of them. For `plan` only, each service package named here is a
module whose attributes load on first use from the file pulumi-aws generates for them
(`aws.ec2.SecurityGroup` from `pulumi_aws/ec2/security_group.py`). A name that has no
such file (an Args type, an enum) makes the package run its real __init__, so every
name resolves as it would without this. `pulumi up` never goes through here.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import types

# the services the stacks use (stacks/aws_*.py); any other one loads as usual
SERVICES = ("ec2", "ec2transitgateway", "iam", "kms", "ssm", "sns", "cloudwatch", "route53", "vpc")
_CAMEL_BOUNDARY = re.compile(r"(?<!^)(?=[A-Z])")


def module_name(attribute: str) -> str:
    """The generated file a public name lives in: SecurityGroup -> security_group,
    get_ami_output -> get_ami."""
    if attribute.endswith("_output"):
        attribute = attribute[: -len("_output")]
    return _CAMEL_BOUNDARY.sub("_", attribute).lower()


class _ServicePackage(types.ModuleType):
    """A provider service package that imports a resource's own module on first use."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        submodule = sys.modules.get(f"{self.__name__}.{name}")
        if submodule is not None:  # `from . import outputs` while outputs is loading
            return submodule
        try:
            module = importlib.import_module(f"{self.__name__}.{module_name(name)}")
        except ImportError:
            return self._load_everything(name)
        # what the package's `from .security_group import *` does (it also puts get_ami,
        # the function, where the import left get_ami, its file); outputs is imported
        # as a module there, its names are not the package's
        if module.__name__ != f"{self.__name__}.outputs":
            for exported in getattr(module, "__all__", ()):
                setattr(self, exported, getattr(module, exported))
        if name in self.__dict__:
            return self.__dict__[name]
        return self._load_everything(name)

    def _load_everything(self, name: str):
        if not self.__dict__.get("_agentctl_loaded"):
            self._agentctl_loaded = True
            # the package's own __init__, run in this module: what the plain import gives
            self.__spec__.loader.exec_module(self)
        if name in self.__dict__:
            return self.__dict__[name]
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


def install(package: str = "pulumi_aws", services: tuple[str, ...] = SERVICES) -> None:
    """Put the lazy service packages in place; a service already imported is left as is."""
    provider = importlib.import_module(package)
    for service in services:
        fullname = f"{package}.{service}"
        current = sys.modules.get(fullname)
        if current is not None and not _is_unloaded_lazy(current):
            continue
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.submodule_search_locations is None:
            continue
        spec.loader = importlib.machinery.SourceFileLoader(fullname, spec.origin)
        module = _ServicePackage(fullname)
        module.__spec__, module.__file__ = spec, spec.origin
        module.__path__, module.__package__ = list(spec.submodule_search_locations), fullname
        sys.modules[fullname] = module
        setattr(provider, service, module)


def _is_unloaded_lazy(module: types.ModuleType) -> bool:
    """A module that pulumi's lazy_import (pulumi/_utils.py) left unexecuted: it is an
    instance of a ModuleType subclass until the first attribute read turns it into a
    plain module. Told by that behaviour, not by the private class's name;
    tests/test_pulumi_private.py is its canary."""
    return type(module) is not types.ModuleType and not isinstance(module, _ServicePackage)
