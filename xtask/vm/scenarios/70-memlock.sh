#!/bin/sh
# Before 5.11 BPF maps count against RLIMIT_MEMLOCK: the agent raises it
# (started under `ulimit -l 64`), and reports a kill.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_memlock_is_raised_where_the_kernel_charges_bpf_maps_to_it
