"""Which modules an `influence.layers` prefix names: shared by the sketch (torch) and the sizes (no torch, no pydantic)."""


def matches(name: str, prefix: str) -> bool:
    """Returns whether a module path matches an influence layer prefix: from its start or as a run of whole components."""
    return name == prefix or name.startswith(prefix + ".") or f".{prefix}." in f".{name}."
