#!/bin/sh
# A forced OOM (echo f > /proc/sysrq-trigger) is reported as forced.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_sysrq_forced_oom_is_reported_as_forced
