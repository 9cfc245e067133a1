"""HyperQueue's side of cmbench scenario 7: one job of N tasks of `true` (what `hq submit
--array 1-N` makes) on 4 workers of 32 cores, output discarded, timed from submission to the
last task's end. Needs `pip install hyperqueue` (its wheel carries the server and workers)."""

import sys
import tempfile
import time

from hyperqueue import Job, LocalCluster
from hyperqueue.cluster import WorkerConfig


def main(tasks: int, runs: int) -> None:
    for run in range(runs):
        with tempfile.TemporaryDirectory() as server_dir, LocalCluster(server_dir) as cluster:
            for _ in range(4):
                cluster.start_worker(WorkerConfig(cores=32))
            client = cluster.client()
            job = Job()
            for _ in range(tasks):
                job.program(["true"], stdout=None, stderr=None)
            started = time.monotonic()
            submitted = client.submit(job)
            client.wait_for_jobs([submitted])
            seconds = time.monotonic() - started
            print(f"run {run + 1}: {tasks} tasks in {seconds:.2f} s: {tasks / seconds:.0f} tasks/s", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
