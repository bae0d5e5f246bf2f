"""Signal kernels (numba): arrays in, arrays out, no Python objects inside."""
