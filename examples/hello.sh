#!/bin/sh
# hello.sh: each rank says who and where it is.
#   cmrun -n 2 -p 2 --wait --label ./hello.sh
echo "rank $CM_PROC_RANK of $CM_NPROCS on node $CM_NODENAME (node rank $CM_NODE_RANK, local rank $CM_LOCAL_RANK)"
