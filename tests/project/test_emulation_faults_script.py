"""scripts/emulation_faults.py (run by hand: a rebuild per fault) still applies to the
kernel source: each fault's code is where the script looks for it, once, and each fault
changes it."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("emulation_faults",
                                              REPO / "scripts" / "emulation_faults.py")
emulation_faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emulation_faults)


@pytest.mark.parametrize("name", sorted(emulation_faults.FAULTS))
def test_each_fault_applies_to_the_kernel_source_once(name):
    fault = emulation_faults.FAULTS[name]
    assert (REPO / fault.path).read_text().count(fault.old) == 1
    assert fault.new != fault.old
