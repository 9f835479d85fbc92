"""Hand-written LLVM intrinsics for the CPU kernel (:mod:`.fused_stats_cpu`): one-liners numba
cannot express.

Used by :mod:`.fused_stats_cpu` and :mod:`.confident_cpu` (maxNum).

Why they exist: numba has no float16 type, no bit casts between float32 and integers, and no
fused multiply-add or IEEE maxNum without fast-math flags.  Without them the fp16 logits would
go through a 65536-entry float32 table (its gathers kept the conversion loop from vectorising:
~0.5 ns per logit more), the max over a row would not vectorise without ``nnan`` (which would
drop the NaN propagation the kernel's contract specifies), and exp/log could not be the
vectorisable Cephes polynomials with explicit FMAs.  What they buy is recorded in
``benchmarks/RESULTS.md``, section "Scoring throughput", row "``dprune score --method
entropy``": 12.96 GB/s, 1.50x the machine's read-and-convert roofline (and 0.50x for every
scorer), where the kernel with the table ran below the roofline.

Each function compiles to one LLVM instruction or call: bitcast, zext/trunc, inttoptr, fpext
from half, ``llvm.maxnum.f32``, ``llvm.fma.f32``.  No ``dprune`` imports.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


def _low_bits(builder, v, bitwidth: int, width: int):
    """An LLVM integer of ``bitwidth`` bits cut or zero-extended to ``width`` bits."""
    if bitwidth > width:
        return builder.trunc(v, ir.IntType(width))
    if bitwidth < width:
        return builder.zext(v, ir.IntType(width))
    return v


@intrinsic
def as_f32(typingctx, bits):
    """The low 32 bits of an integer, reinterpreted as a float32."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_low_bits(builder, args[0], bits.bitwidth, 32), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bits(typingctx, x):
    """The bits of a float32, as an int64 in [0, 2**32)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(x), codegen


def _pointer_to(element):
    def typer(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None
        ptr = types.CPointer(element)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(ptr))

        return ptr(addr), codegen

    return typer


@intrinsic
def u16_at(typingctx, addr):
    """An address as a pointer to uint16 (rows of fp16 / bf16 logits)."""
    return _pointer_to(types.uint16)(typingctx, addr)


@intrinsic
def u32_at(typingctx, addr):
    """An address as a pointer to uint32 (rows of fp32 logits)."""
    return _pointer_to(types.uint32)(typingctx, addr)


@intrinsic
def half_to_f32(typingctx, h):
    """float16 bits (the low 16 bits of an integer) to the float32 value: LLVM's exact fpext
    (``vcvtph2ps`` with F16C)."""
    if not isinstance(h, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        half = builder.bitcast(_low_bits(builder, args[0], h.bitwidth, 16), ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return types.float32(h), codegen


def _llvm_f32_intrinsic(name: str, n_args: int):
    def typer(typingctx, *args):
        if len(args) != n_args or any(a != types.float32 for a in args):
            return None

        def codegen(context, builder, signature, llargs):
            f32 = ir.FloatType()
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * n_args), name)
            return builder.call(fn, llargs)

        return types.float32(*args), codegen

    return typer


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum of two float32: the larger, ignoring a NaN operand (vectorises without fast-math)."""
    return _llvm_f32_intrinsic("llvm.maxnum.f32", 2)(typingctx, a, b)


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c in float32 with one rounding."""
    return _llvm_f32_intrinsic("llvm.fma.f32", 3)(typingctx, a, b, c)
