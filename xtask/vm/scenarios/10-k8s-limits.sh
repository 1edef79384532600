#!/bin/sh
# Container, pod and kubepods (allocatable) limits in a kubelet-shaped cgroup v2 hierarchy.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_container_pod_and_allocatable_limits
