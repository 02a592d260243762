"""setup.py — `pip install ./python` installs the kiln package.

The package is pure Python on top of kiln's C library, libkiln.so. The install places a
copy of the library inside the package when it finds one: $KILN_LIBRARY if set (it must
exist), else the release build of this checkout (build/release/libkiln.so — build it first
with `cmake -S . -B build/release && cmake --build build/release`). Without one the package
looks for the library at import time ($KILN_LIBRARY, then the system's libkiln.so).

No pyproject.toml on purpose: with one, pip would fetch setuptools into an isolated build
environment, which needs the network; this way pip uses the setuptools already installed.
"""
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))


def find_library():
    env = os.environ.get("KILN_LIBRARY")
    if env:
        if not os.path.isfile(env):
            sys.exit(f"kiln setup: KILN_LIBRARY={env} does not exist")
        return env
    tree = os.path.join(os.path.dirname(HERE), "build", "release", "libkiln.so")
    return tree if os.path.isfile(tree) else None


class BuildPyWithLibrary(build_py):
    """build_py, plus the copy of libkiln.so next to the package's modules."""

    def run(self):
        super().run()
        lib = find_library()
        if lib is None:
            print("kiln setup: no libkiln.so found (set KILN_LIBRARY or build build/release); "
                  "the package will look for it at import time", file=sys.stderr)
            return
        dest = os.path.join(self.build_lib, "kiln", "libkiln.so")
        shutil.copyfile(os.path.realpath(lib), dest)
        print(f"kiln setup: bundling {lib}", file=sys.stderr)


class BinaryDistribution(Distribution):
    """The wheel carries a shared library: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return find_library() is not None


setup(
    name="kiln",
    version="0.1.0",
    description="kiln: ahead-of-time compiled ONNX/PyTorch models loaded eagerly, lazily or "
                "asynchronously onto CPU cores (torch_neuronx-style API)",
    packages=["kiln"],
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
    cmdclass={"build_py": BuildPyWithLibrary},
    distclass=BinaryDistribution,
)
