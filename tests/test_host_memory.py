"""`keep_freed_host_memory`: a block freed and allocated again is served from pages already mapped, instead of
fresh ones that page-fault when touched (what XLA's per-call temporaries above 32 MiB pay at every call)."""

import os
import subprocess
import sys

import pytest

# Allocate, touch and free 64 MiB, then count the minor page faults of doing it again. Fresh process: the
# allocator's settings are process-wide.
CODE = """
import resource, sys
import numpy as np
from astroformer import keep_freed_host_memory
print(int(keep_freed_host_memory()) if sys.argv[1] == "keep" else 1)
pages = (1 << 26) // resource.getpagesize()
a = np.ones(1 << 24, np.float32)
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(1 << 24, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, pages)
"""


def _faults(mode, **env):
    environ = {k: v for k, v in os.environ.items() if k != "ASTROFORMER_KEEP_HOST_MEMORY"} | env
    out = subprocess.run(
        [sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True, env=environ
    ).stdout.split()
    return bool(int(out[0])), int(out[1]), int(out[2])


def test_kept_memory_is_reused_without_page_faults():
    taken, kept_faults, pages = _faults("keep")
    if not taken:
        pytest.skip("the C library is not glibc: the allocator's settings are not available")
    _, default_faults, _ = _faults("default")
    if default_faults < pages // 100:
        pytest.skip(f"the allocator's defaults already reuse the block here ({default_faults} faults): preloaded?")
    # The allocator's defaults map the block afresh and every page faults again (fewer with transparent huge pages).
    assert kept_faults < default_faults // 10 and kept_faults < pages // 10, (kept_faults, default_faults, pages)


def test_the_environment_turns_it_off():
    taken, _, _ = _faults("keep", ASTROFORMER_KEEP_HOST_MEMORY="0")
    assert not taken
