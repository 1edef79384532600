#!/bin/sh
# Main process or child, the OOM killer's own SIGKILL, survivors, group
# kills and where the memory was: the kernel side past this kernel's
# verifier, then the agent's outcome and oom_stat for real kills.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_victim_lineage_and_the_oom_killers_sigkill
