#!/usr/bin/env python3
"""parallel_sum.py: the ranks add up 1..N together, each its own slice, and rank 0 collects the
partial sums through files in the shared working directory (no MPI needed).

    cmrun -n 2 -p 2 --wait --label ./parallel_sum.py 10000000
"""
import os
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
rank, size = int(os.environ["CM_PROC_RANK"]), int(os.environ["CM_NPROCS"])
parts = os.path.join("cmlogs", os.environ["CM_JOB_ID"], "parts")
os.makedirs(parts, exist_ok=True)

# Rank r takes the numbers r+1, r+1+size, r+1+2*size, ... up to n.
mine = sum(range(rank + 1, n + 1, size))
with open(os.path.join(parts, f"{rank}.tmp"), "w") as f:
    f.write(str(mine))
os.rename(os.path.join(parts, f"{rank}.tmp"), os.path.join(parts, str(rank)))
print(f"rank {rank}: partial sum {mine}")

if rank == 0:
    while len([p for p in os.listdir(parts) if p.isdigit()]) < size:
        time.sleep(0.05)
    total = sum(int(open(os.path.join(parts, str(r))).read()) for r in range(size))
    print(f"total {total} (expected {n * (n + 1) // 2})")
    sys.exit(0 if total == n * (n + 1) // 2 else 1)
