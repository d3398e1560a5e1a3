"""The matrix products that the CPU layers share: the same result as NumPy's, and the same bits on any
number of threads (the same seed must give the same run however many cores it has)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from numbacnn.cpu_kernels import INNER_ROWS_PER_BLOCK, MAX_INNER_BLOCKS, matmul, matmul_t


@pytest.mark.parametrize("rows", [5, INNER_ROWS_PER_BLOCK * 3 + 7, INNER_ROWS_PER_BLOCK * (MAX_INNER_BLOCKS + 3)])
def test_matmul_t_is_a_transposed_product_with_the_same_bits_on_any_thread_count(rows):
    rng = np.random.default_rng(rows)
    a, b = rng.standard_normal((rows, 7)).astype(np.float32), rng.standard_normal((rows, 3)).astype(np.float32)
    results = []
    threads = numba.get_num_threads()
    try:
        for count in sorted({1, threads}):
            numba.set_num_threads(count)
            results.append(matmul_t(a, b, out=np.full((7, 3), np.nan, np.float32)).copy())
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_allclose(results[0], a.astype(np.float64).T @ b, rtol=1e-4, atol=1e-4 * np.sqrt(rows))
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_matmul_splits_rows_and_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1000, 9)), rng.standard_normal((9, 4))
    np.testing.assert_allclose(matmul(a, b, out=np.empty((1000, 4))), a @ b, rtol=1e-12, atol=1e-12)
