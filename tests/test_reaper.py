"""kdsweep/reaper.py: a SIGKILLed driver's descendants end with it, and nothing else does."""

import os
import signal
import subprocess
import sys

from processes import alive, wait_for

DRIVER = """
import subprocess, sys, time
from kdsweep.reaper import watch_driver
watch_driver()
# A child, and a grandchild whose parent ends with the driver and leaves it behind (as the raylet ends with its
# driver and leaves Ray's agents), both in sessions of their own, so only the reaper can end them.
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
orphaner = subprocess.Popen([sys.executable, "-c", ORPHANER], stdout=subprocess.PIPE, text=True)
grandchild = int(orphaner.stdout.readline())
time.sleep(3)  # the reaper notes descendants every 0.5 s, once it has started (slower under load)
print(child.pid, grandchild, flush=True)
time.sleep(300)
"""
ORPHANER = """
import os, subprocess, time
driver = os.getppid()
print(subprocess.Popen(["sleep", "301"], start_new_session=True).pid, flush=True)
while os.getppid() == driver:
    time.sleep(0.05)
"""


def test_the_descendants_of_a_killed_driver_are_ended_and_no_other_process():
    bystander = subprocess.Popen(["sleep", "302"])  # started by this test, not by the driver
    driver = subprocess.Popen([sys.executable, "-c", f"ORPHANER = {ORPHANER!r}\n{DRIVER}"],
                              stdout=subprocess.PIPE, text=True)
    child = grandchild = 0
    try:
        child, grandchild = map(int, driver.stdout.readline().split())
        assert alive(child) and alive(grandchild)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not alive(child) and not alive(grandchild), 10, "the reaper to end the driver's descendants")
        assert alive(bystander.pid), "the reaper ended a process that never descended from the driver"
    finally:
        driver.kill()
        for pid in (child, grandchild):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)
        bystander.kill()
        bystander.wait()
