"""amc.memory: glibc keeps freed activation memory for reuse instead of page-faulting it in on every pass."""
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = """
import resource, sys, torch
from amc.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(2):  # 64 MiB, freed at once: mapped afresh by default (the heap settles in two rounds)
    torch.empty(16 * 2 ** 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.empty(16 * 2 ** 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    pages = 16 * 2 ** 20 * 4 // 4096  # of one 64 MiB block
    assert faults("default") > 6 * pages  # mapped afresh on each of the 8 rounds
    assert faults("keep") < 3 * pages  # reused (the heap may still move once or twice)
