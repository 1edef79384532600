#!/bin/sh
# The node-level case: a hog exhausts the node; the Burstable pod (adj 985) is killed below its limit, the Guaranteed one survives.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_node_level_oom_kills_the_burstable_pod_below_its_limit
