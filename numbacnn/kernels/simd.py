"""A vector of float32 lanes for Numba kernels: what keeps a block of accumulators in registers.

Numba keeps local arrays on the heap, and LLVM neither vectorises a block of scalar accumulators nor keeps it in
registers (a kernel with 384 scalar accumulators compiled to no vector FMA and about 1,900 stack spills). A value
of LLVM's ``<N x float>`` type, by contrast, lives in one vector register, so a kernel that holds a dozen of
them as local variables runs as a loop of vector FMAs with no memory traffic for its sums.

The type is ``FloatVector(lanes)``; kernels make and use its values through the intrinsics below, which compile
to single LLVM instructions:

    zero16() / zero8()                   all lanes 0
    broadcast16(x) / broadcast8(x)       all lanes x (a float32 scalar)
    splat16(a, i) / splat8(a, i)         all lanes a[i] (i the flat index, never negative)
    load16(a, i) / load8(a, i)           lanes a[i], a[i + 1], ... of a contiguous float32 array (any rank: i is
                                         the flat index)
    store(a, i, v)                       writes v's lanes there
    load_first16(a, i, k) / load_first8  lanes a[i] ... a[i + k - 1], the others 0 (nothing past them read)
    store_first(a, i, v, k)              writes v's first k lanes only (for channel counts that are not
                                         whole vectors)
    fma(a, b, c)                         a * b + c, each lane rounded once (llvm.fma)
    add(a, b), sub(a, b), mul(a, b)      lane by lane
    relu(v)                              max(v, 0), NaN kept (a NaN lane stays NaN)
    greater(a, b)                        a mask of lanes where a > b (False where either is NaN)
    isnan(v)                             a mask of the lanes that hold NaN
    either(m, k)                         the lanes set in either mask
    store_int32(a, i, v)                 v's lanes (whole numbers below 2**24) to a contiguous int32 array
    where_equals(a, i, k, v)             v's lanes where the contiguous int32 array's a[i + lane] == k, else 0
    select(mask, a, b)                   a where mask, else b
    lane(v, k)                           lane k as a float32 scalar (k a constant)

Which width a kernel uses is the generator's choice (``lanes()``): 16 with AVX-512, 8 otherwise. Arithmetic is
IEEE float32 as written: no reassociation, so a kernel's results depend only on the order it adds in.
"""

from __future__ import annotations

import os
from functools import lru_cache

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES_ENV = "NUMBACNN_SIMD_LANES"


class FloatVector(types.Type):
    """The Numba type of ``lanes`` float32 values held as one LLVM vector."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__(name=f"float32x{lanes}")


class BoolVector(types.Type):
    """A mask of ``lanes`` booleans, as ``greater`` makes and ``select`` takes."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__(name=f"boolx{lanes}")


@register_model(FloatVector)
class _FloatVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.lanes))


@register_model(BoolVector)
class _BoolVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.IntType(1), fe_type.lanes))


def _vector_type(lanes: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), lanes)


def _splat(builder, value, lanes: int):
    """A vector with ``value`` in every lane: insert into lane 0, then a shuffle that repeats it."""
    vector_type = _vector_type(lanes)
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined), mask)


def _is_float32_array(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C"


def _element_pointer(context, builder, array_type, array_value, index_type, index_value, lanes: int):
    """A ``<lanes x float>*`` to element ``index`` (flat) of a contiguous float32 array."""
    array = context.make_array(array_type)(context, builder, array_value)
    index = context.cast(builder, index_value, index_type, types.intp)
    pointer = builder.gep(array.data, [index], inbounds=True)
    return builder.bitcast(pointer, _vector_type(lanes).as_pointer())


def _make_constructors(lanes: int):
    vector = FloatVector(lanes)

    @intrinsic
    def zero(typingctx):
        def codegen(context, builder, signature, args):
            return ir.Constant(_vector_type(lanes), [0.0] * lanes)

        return vector(), codegen

    @intrinsic
    def broadcast(typingctx, x):
        if not isinstance(x, types.Float):
            return None

        def codegen(context, builder, signature, args):
            value = context.cast(builder, args[0], signature.args[0], types.float32)
            return _splat(builder, value, lanes)

        return vector(x), codegen

    @intrinsic
    def splat(typingctx, a, i):
        """All lanes a[i]: one load, with no test for a negative index (which Numba adds to a[i] itself, and
        whose extra registers push accumulators out to memory)."""
        if not (_is_float32_array(a) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            index = context.cast(builder, args[1], signature.args[1], types.intp)
            value = builder.load(builder.gep(array.data, [index], inbounds=True), align=4)
            return _splat(builder, value, lanes)

        return vector(a, i), codegen

    @intrinsic
    def load(typingctx, a, i):
        if not (_is_float32_array(a) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], lanes)
            return builder.load(pointer, align=4)

        return vector(a, i), codegen

    return zero, broadcast, splat, load


zero16, broadcast16, splat16, load16 = _make_constructors(16)
zero8, broadcast8, splat8, load8 = _make_constructors(8)


@intrinsic
def store(typingctx, a, i, v):
    if not (_is_float32_array(a) and isinstance(i, types.Integer) and isinstance(v, FloatVector)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1],
                                   signature.args[2].lanes)
        builder.store(args[2], pointer, align=4)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


def _same_vectors(*vectors) -> bool:
    return all(isinstance(v, FloatVector) for v in vectors) and len({v.lanes for v in vectors}) == 1


@intrinsic
def fma(typingctx, a, b, c):
    if not _same_vectors(a, b, c):
        return None

    def codegen(context, builder, signature, args):
        vector_type = _vector_type(signature.args[0].lanes)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3), f"llvm.fma.v{vector_type.count}f32")
        return builder.call(function, args)

    return a(a, b, c), codegen


def _lanewise(operation):
    @intrinsic
    def binary(typingctx, a, b):
        if not _same_vectors(a, b):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, operation)(*args)

        return a(a, b), codegen

    return binary


add = _lanewise("fadd")
sub = _lanewise("fsub")
mul = _lanewise("fmul")


@intrinsic
def greater(typingctx, a, b):
    if not _same_vectors(a, b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fcmp_ordered(">", *args)

    return BoolVector(a.lanes)(a, b), codegen


@intrinsic
def select(typingctx, mask, a, b):
    if not (isinstance(mask, BoolVector) and _same_vectors(a, b) and mask.lanes == a.lanes):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return a(mask, a, b), codegen


@intrinsic
def relu(typingctx, v):
    """max(v, 0) lane by lane, NaN kept: 0 only where v <= 0 (a NaN compares false)."""
    if not isinstance(v, FloatVector):
        return None

    def codegen(context, builder, signature, args):
        zero = ir.Constant(_vector_type(signature.args[0].lanes), [0.0] * signature.args[0].lanes)
        at_most_zero = builder.fcmp_ordered("<=", args[0], zero)
        return builder.select(at_most_zero, zero, args[0])

    return v(v), codegen


@intrinsic
def isnan(typingctx, v):
    """A mask of the lanes that hold NaN."""
    if not isinstance(v, FloatVector):
        return None

    def codegen(context, builder, signature, args):
        return builder.fcmp_unordered("uno", args[0], args[0])

    return BoolVector(v.lanes)(v), codegen


@intrinsic
def either(typingctx, a, b):
    """The lanes set in mask ``a`` or in mask ``b``."""
    if not (isinstance(a, BoolVector) and isinstance(b, BoolVector) and a.lanes == b.lanes):
        return None

    def codegen(context, builder, signature, args):
        return builder.or_(*args)

    return a(a, b), codegen


def _first_lanes(builder, count_type, count, lanes: int):
    """A mask of the lanes below ``count`` (a run-time integer)."""
    index_type = ir.IntType(32)
    count = builder.trunc(count, index_type) if count_type.bitwidth > 32 else builder.sext(count, index_type) \
        if count_type.bitwidth < 32 else count
    first = builder.insert_element(ir.Constant(ir.VectorType(index_type, lanes), ir.Undefined), count,
                                   ir.Constant(index_type, 0))
    counts = builder.shuffle_vector(first, ir.Constant(ir.VectorType(index_type, lanes), ir.Undefined),
                                    ir.Constant(ir.VectorType(index_type, lanes), [0] * lanes))
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(index_type, lanes), list(range(lanes))), counts)


def _masked(builder, operation: str, lanes: int, arguments):
    vector_type = _vector_type(lanes)
    mask_type = ir.VectorType(ir.IntType(1), lanes)
    if operation == "load":
        signature = ir.FunctionType(vector_type, [vector_type.as_pointer(), ir.IntType(32), mask_type, vector_type])
    else:
        signature = ir.FunctionType(ir.VoidType(), [vector_type, vector_type.as_pointer(), ir.IntType(32), mask_type])
    function = cgutils.get_or_insert_function(builder.module, signature, f"llvm.masked.{operation}.v{lanes}f32.p0")
    return builder.call(function, arguments)


def _make_partial_load(lanes: int):
    vector = FloatVector(lanes)

    @intrinsic
    def load_first(typingctx, a, i, k):
        """Lanes a[i], ..., a[i + k - 1], the rest 0: the elements after them are not read (they may lie past
        the array's end)."""
        if not (_is_float32_array(a) and isinstance(i, types.Integer) and isinstance(k, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], lanes)
            mask = _first_lanes(builder, signature.args[2], args[2], lanes)
            zeros = ir.Constant(_vector_type(lanes), [0.0] * lanes)
            return _masked(builder, "load", lanes, [pointer, ir.Constant(ir.IntType(32), 4), mask, zeros])

        return vector(a, i, k), codegen

    return load_first


load_first16, load_first8 = _make_partial_load(16), _make_partial_load(8)


@intrinsic
def store_first(typingctx, a, i, v, k):
    """Writes v's first ``k`` lanes to a[i], ..., a[i + k - 1]; the elements after them are not touched."""
    if not (_is_float32_array(a) and isinstance(i, types.Integer) and isinstance(v, FloatVector)
            and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        lanes = signature.args[2].lanes
        pointer = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], lanes)
        mask = _first_lanes(builder, signature.args[3], args[3], lanes)
        _masked(builder, "store", lanes, [args[2], pointer, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()

    return types.none(a, i, v, k), codegen


@intrinsic
def store_int32(typingctx, a, i, v):
    """Writes the lanes of ``v`` (whole numbers held as floats, below 2**24) to a contiguous int32 array."""
    if not (isinstance(a, types.Array) and a.dtype == types.int32 and a.layout == "C"
            and isinstance(i, types.Integer) and isinstance(v, FloatVector)):
        return None

    def codegen(context, builder, signature, args):
        lanes = signature.args[2].lanes
        array = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.gep(array.data, [index], inbounds=True)
        vector_type = ir.VectorType(ir.IntType(32), lanes)
        builder.store(builder.fptosi(args[2], vector_type), builder.bitcast(pointer, vector_type.as_pointer()),
                      align=4)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def where_equals(typingctx, a, i, k, v):
    """The lanes of ``v`` where a[i + lane] == k (``a`` a contiguous int32 array, such as ``store_int32``
    writes), the others 0: a max pooling window's gradient kept where its winner is."""
    if not (isinstance(a, types.Array) and a.dtype == types.int32 and a.layout == "C"
            and isinstance(i, types.Integer) and isinstance(k, types.Integer) and isinstance(v, FloatVector)):
        return None

    def codegen(context, builder, signature, args):
        lanes = signature.args[3].lanes
        array = context.make_array(signature.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        integers = ir.VectorType(ir.IntType(32), lanes)
        pointer = builder.bitcast(builder.gep(array.data, [index], inbounds=True), integers.as_pointer())
        wanted = builder.insert_element(ir.Constant(integers, ir.Undefined),
                                        context.cast(builder, args[2], signature.args[2], types.int32),
                                        ir.Constant(ir.IntType(32), 0))
        wanted = builder.shuffle_vector(wanted, ir.Constant(integers, ir.Undefined),
                                        ir.Constant(integers, [0] * lanes))
        equal = builder.icmp_signed("==", builder.load(pointer, align=4), wanted)
        return builder.select(equal, args[3], ir.Constant(_vector_type(lanes), [0.0] * lanes))

    return v(a, i, k, v), codegen


@intrinsic
def lane(typingctx, v, k):
    if not (isinstance(v, FloatVector) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.int32)
        return builder.extract_element(args[0], index)

    return types.float32(v, k), codegen


def lanes() -> int:
    """The vector width the generated kernels use here: ``NUMBACNN_SIMD_LANES`` (8 or 16) when set, else 16
    where the processor has AVX-512, else 8 (AVX2's 256-bit registers)."""
    forced = os.environ.get(LANES_ENV, "").strip()
    if forced:
        if forced not in ("8", "16"):
            from ..errors import NumbacnnError

            raise NumbacnnError(f"{LANES_ENV} is {forced!r}; set it to 8 or 16, or unset it.")
        return int(forced)
    return 16 if _has_avx512() else 8


@lru_cache(maxsize=None)
def _has_avx512() -> bool:
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return bool(features.get("avx512f", False))


def registers() -> int:
    """How many vector registers the processor has for the generator's blocking: 32 with AVX-512, else 16."""
    return 32 if _has_avx512() else 16
