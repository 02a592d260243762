"""conftest.py — runs the tests against this checkout's python/kiln package.

The library comes from $KILN_LIBRARY (ctest sets it to the build's libkiln.so), else the
package's own search (next to the package, build/release, the system).
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "python"))

# Fewer threads for PyTorch's references: the machine is shared and kiln's cores are pinned.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # --basetemp (ctest passes one in the build tree): pytest creates it but not its parents.
    base = config.getoption("basetemp", None)
    if base:
        os.makedirs(os.path.dirname(os.path.abspath(str(base))), exist_ok=True)


def pytest_report_header(config):
    import kiln
    return f"kiln: {kiln.__file__}, library {kiln.library_path}, {kiln.num_cores()} core(s)"


def pytest_sessionfinish(session, exitstatus):
    # A run that collected nothing, or skipped everything, must not pass quietly.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter else 1
    if exitstatus == 0 and passed == 0:
        session.exitstatus = 1
