"""The `PeftType` member SVF registers under (DESIGN §7).

PEFT accepts new methods only under a name that already exists in its closed `PeftType` enum. `_ensure_peft_type`
adds the member; it is the one function in slam_hf that touches enum internals, and it checks its own work and
raises naming the peft version if a future peft or Python changes those internals.
"""

from __future__ import annotations

import sys
from typing import Optional

import peft
from peft.utils.peft_types import PeftType

SVF_PEFT_TYPE = "SVF"
# peft versions on which the PeftType extension below is tested (the oldest pin and the newest resolved).
TESTED_PEFT_VERSIONS = ("0.18.0", "0.21.2")


def _enum_problem(enum_cls, name: str, member) -> Optional[str]:
    """What (if anything) keeps `member` from behaving like a genuine member `name` of `enum_cls`."""
    try:
        if enum_cls[name] is not member:
            return f"{enum_cls.__name__}[{name!r}] does not return the new member"
        if enum_cls(name) is not member:
            return f"{enum_cls.__name__}({name!r}) does not return the new member"
        if getattr(enum_cls, name) is not member:
            return f"{enum_cls.__name__}.{name} does not return the new member"
        if name not in list(enum_cls):
            return f"iterating {enum_cls.__name__} does not yield {name!r}"
        if not (member == name and hash(member) == hash(name)):
            return f"the new member does not compare and hash like the string {name!r}"
    except Exception as err:  # any failure of the enum protocol is the problem to report
        return f"{type(err).__name__}: {err}"
    return None


def _ensure_peft_type(name: str = SVF_PEFT_TYPE, enum_cls=PeftType):
    """Return `enum_cls[name]`, adding the member first if peft lacks it (the one place that touches enum internals).

    Why: `peft.utils.peft_types.register_peft_method` refuses any name that is not already a member of the closed
    `PeftType` str-Enum, and peft offers no API to add one. `EnumType.__setattr__` forbids assigning members, so
    the member is built as enum.py builds str members and entered into the three tables enum lookups read
    (by name, by value, iteration order). Verified on CPython 3.11 with peft 0.18.0 and 0.21.2; the result is
    checked here, so a peft or Python whose enum internals differ fails with a RuntimeError naming the versions
    instead of misbehaving later.
    """
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        return existing
    try:
        member = str.__new__(enum_cls, name)
        member._name_ = name
        member._value_ = name
        member.__objclass__ = enum_cls
        member._sort_order_ = len(enum_cls._member_names_)
        type.__setattr__(enum_cls, name, member)
        enum_cls._member_map_[name] = member
        enum_cls._value2member_map_[name] = member
        enum_cls._member_names_.append(name)
    except Exception as err:
        problem = f"{type(err).__name__}: {err}"
    else:
        problem = _enum_problem(enum_cls, name, member)
        if problem is None:
            return member
    raise RuntimeError(
        f"slam_hf.adapters.svf could not add {name!r} to {enum_cls.__module__}.{enum_cls.__name__} on peft "
        f"{peft.__version__} (Python {sys.version.split()[0]}): {problem}. PEFT registers a new method only under "
        "an existing PeftType member, and this peft/Python changed the enum internals the workaround relies on "
        f"(tested with peft {' and '.join(TESTED_PEFT_VERSIONS)} on CPython 3.11). Install a tested peft "
        f"(pip install 'peft=={TESTED_PEFT_VERSIONS[-1]}') or report this to slam_hf."
    )
