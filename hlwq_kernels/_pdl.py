"""Programmatic dependent launch (PDL, sm_90+): the two grid-dependency instructions as Triton functions (callable
from Gluon kernels too), and where a launch may ask for it.

A kernel launched with PDL (``launch_pdl=True``) may start while the kernel before it on the stream still runs: it
must not read that kernel's outputs, or write anything it may still read, before ``gdc_wait``. A kernel that calls
``gdc_launch`` lets the next one (if launched with PDL) start once all its programs have passed there or exited.
Both are no-ops for kernels launched without PDL. Triton's ``triton.language.extra.cuda`` has the same two
instructions; these add a "memory" clobber, so that the compiler keeps loads below the wait.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting


@triton.jit
def gdc_wait():
    """``griddepcontrol.wait``: until the previous kernel on the stream has finished and its writes are visible."""
    tl.inline_asm_elementwise("griddepcontrol.wait; mov.u32 $0, 0;", "=r,~{memory}", [], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def gdc_launch():
    """``griddepcontrol.launch_dependents``: the next kernel, if launched with PDL, may start."""
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.u32 $0, 0;", "=r,~{memory}", [],
                              dtype=tl.int32, is_pure=False, pack=1)


def pdl_supported(device: torch.device) -> bool:
    """PDL applies: a compiled kernel (not the interpreter) on an sm_90+ GPU."""
    return (device.type == "cuda" and not interpreting()
            and torch.cuda.get_device_capability(device) >= (9, 0))
