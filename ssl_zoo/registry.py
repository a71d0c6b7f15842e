"""What the extension points (methods, federated algorithms, evaluation protocols) share: a
registry maps a name to a class, and the class's own options are the keyword arguments of its
constructor, checked against that signature before anything runs."""

from __future__ import annotations

import inspect

from ssl_zoo.errors import UserError, unknown_choice


def options_of(cls: type) -> dict[str, object]:
    """The class's own options and their defaults (what its base class takes through **kwargs
    is not its own)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}  # fmt: skip


def build(kind: str, registry: dict[str, type], name: str, options: dict | None = None, **shared):
    """registry[name](**options, **shared), where an unknown name or option is one line naming
    the valid ones (`kind`: the option that chose the name, as the user typed it)."""
    if name not in registry:
        raise unknown_choice(kind, name, registry)
    options = dict(options or {})
    valid = options_of(registry[name])
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"unknown {kind}_args {', '.join(unknown)} for {name}; "
                        f"valid: {', '.join(sorted(valid)) or '(none)'}")  # fmt: skip
    return registry[name](**options, **shared)
