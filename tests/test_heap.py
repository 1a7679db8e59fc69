"""nanollm.heap: freed activation memory stays in the process, so the next step's arrays fault in
no new pages; and the benchmarks' peak resident memory is the measured process's own."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nanollm import heap

# A fresh interpreter imports nanollm, then 20 times allocates and fills 40 arrays of 1 MiB and
# frees them all (a step's activations), and prints the minor page faults of the last 10 rounds.
FAULTS = """
import json, resource
import numpy as np
import nanollm
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    activations = [np.ones(2**18, dtype=np.float32) for _ in range(40)]
    del activations
for _ in range(10):
    step()
before = faults()
for _ in range(10):
    step()
print(json.dumps({"faults": faults() - before, "kept": nanollm.heap.keep_freed_memory()}))
"""


def page_faults(env):
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                          env=dict(os.environ, **env))
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not heap.keep_freed_memory(),
                    reason="mallopt's thresholds are glibc's (Linux)")
def test_a_freed_array_is_reused_without_new_page_faults():
    kept = page_faults({})
    default = page_faults({heap.SWITCH: "default"})
    assert kept["kept"] and not default["kept"]
    assert default["faults"] >= 10 * 40 * 256 * 0.9  # 40 MiB = 10,240 pages of 4 KiB, faulted in every round
    assert kept["faults"] < 100  # the same pages every round


def test_peak_resident_memory_is_the_child_process_own_not_its_parents():
    from nanollm.tools.memory_bench import peak_resident_bytes

    big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    assert peak_resident_bytes() > big.nbytes
    code = "from nanollm.tools.memory_bench import peak_resident_bytes; print(peak_resident_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 200 * 2**20, child  # ru_maxrss said > 300 MiB here: Linux carries it across fork and exec
