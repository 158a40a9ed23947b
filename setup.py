"""Build the Cython fastpath extension with optimisation on.

Everything else about the distribution lives in pyproject.toml.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fastpath._fastpath",
        ["fastpath/_fastpath.pyx"],
        extra_compile_args=["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            # Indexing in the hot loops is checked by hand against the ring and buffer sizes.
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
