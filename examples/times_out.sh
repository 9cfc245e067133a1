#!/bin/sh
# times_out.sh: works for ever, printing a line a second. Run it with a time limit and watch the
# job end TimedOut: SIGTERM first (it says so), then SIGKILL after the grace period.
#   cmrun -t 0:05 --wait ./times_out.sh
trap 'echo "got SIGTERM: the time limit ran out"; exit 143' TERM
i=0
while true; do
    i=$((i + 1))
    echo "second $i"
    sleep 1
done
