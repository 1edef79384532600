#!/bin/sh
# oomtrace rank --pod on cgroup v2: rank 1 and its memory.oom.group are what the kernel kills.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_rank_of_a_pod_names_the_processes_the_kernel_kills
