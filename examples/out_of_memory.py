#!/usr/bin/env python3
"""out_of_memory.py: takes memory 16 MB at a time until the node stops it. Run it with a small
limit and watch the job end OutOfMemory, with its peak in `cminfo JOB`:

    cmrun --mem-per-node 64 --wait ./out_of_memory.py
"""
import time

hoard = []
while True:
    hoard.append(bytearray(16 << 20))
    print(f"holding {16 * len(hoard)} MB", flush=True)
    time.sleep(0.1)
