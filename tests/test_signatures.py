"""Every op package lists (reference, triton launcher) pairs in ``IMPLS``; each pair must take
exactly the same arguments (names, kinds, defaults), so the two paths cannot drift apart."""

import importlib
import inspect
import pkgutil

import pytest

import hlwq_kernels


def _pairs():
    out = []
    for mod in pkgutil.iter_modules(hlwq_kernels.__path__):
        if not mod.ispkg:
            continue
        pkg = importlib.import_module(f"hlwq_kernels.{mod.name}")
        for ref, tri in getattr(pkg, "IMPLS", ()):
            out.append(pytest.param(ref, tri, id=f"{mod.name}:{ref.__name__}"))
    return out


PAIRS = _pairs()


def test_core_ops_declare_pairs():
    names = {p.id.split(":")[0] for p in PAIRS}
    assert {"fwht", "pack_bits"} <= names, names


@pytest.mark.parametrize("ref, tri", PAIRS)
def test_reference_and_triton_take_same_arguments(ref, tri):
    def shape(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    assert shape(ref) == shape(tri), f"{ref.__name__}{inspect.signature(ref)} != {tri.__name__}{inspect.signature(tri)}"
