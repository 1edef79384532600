#!/bin/sh
# signal_generate (tp_btf and the classic tracepoint) past this kernel's
# verifier: a listed killer's SIGKILL/SIGTERM reported once, kill -9 from sh
# and SIGUSR1 not; task start times in the kill records.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_signal_hook_and_start_times
