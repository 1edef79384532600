#!/bin/sh
# memory.oom.group=1: every task killed is reported, all in one incident.
. "$(dirname "$0")/../lib.sh"
require_vm
run_vm_test vm_oom_group_kills_are_one_incident
