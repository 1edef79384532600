#!/bin/sh
# A real userspace OOM killer: Debian's earlyoom ($OOMTRACE_EARLYOOM, downloaded
# and extracted by the host, never installed there) kills a Burstable pod on a
# node under memory pressure; oomtrace reports it as killer.kind userspace_oom
# with the pod's identity.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_earlyoom_kill_is_reported_as_a_userspace_oom_kill_of_the_pod
