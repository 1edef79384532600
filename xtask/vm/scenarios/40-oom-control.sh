#!/bin/sh
# The fentry and kprobe hooks on oom_kill_process, and the same kill with both disabled.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_oom_control_hook_and_its_fallback
