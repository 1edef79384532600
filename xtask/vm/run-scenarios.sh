#!/bin/sh
# Run every xtask/vm/scenarios/*.sh in turn inside the test VM and print one
# PASS/FAIL/SKIP line per scenario and a closing "N passed, N failed" line.
# Results also go to $SCRATCH/results.tsv (status, name, seconds) for the host.
# Scenarios get OOMTRACE_BIN, KERNEL_VERSION and SCRATCH in their environment;
# exit 0 = pass, 77 = skip, anything else = fail.
# OOMTRACE_SCENARIOS="a b" runs only scenarios whose name contains a or b.
here=$(dirname "$0")
. "$here/lib.sh"
require_vm

results=${SCRATCH:?SCRATCH is not set}/results.tsv
: >"$results"
pass=0 fail=0 skipped=0
echo "scenarios on $(uname -r) (${OOMTRACE_KERNEL:-}), OOMTRACE_BIN=${OOMTRACE_BIN:-}"
for s in "$here"/scenarios/*.sh; do
	[ -e "$s" ] || continue
	name=$(basename "$s" .sh)
	if [ -n "${OOMTRACE_SCENARIOS:-}" ]; then
		want=
		for f in $OOMTRACE_SCENARIOS; do
			case $name in *"$f"*) want=1 ;; esac
		done
		[ -n "$want" ] || continue
	fi
	echo "=== RUN $name"
	t0=$(cut -d' ' -f1 /proc/uptime)
	# Each scenario in its own shell, from a clean cgroup and directory.
	(cd /tmp && exec sh "$s")
	rc=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	case $rc in
	0) st=PASS pass=$((pass + 1)) ;;
	77) st=SKIP skipped=$((skipped + 1)) ;;
	*) st=FAIL fail=$((fail + 1)) ;;
	esac
	if [ "$st" = FAIL ]; then
		echo "FAIL $name (exit $rc, ${secs} s)"
	else
		echo "$st $name (${secs} s)"
	fi
	printf '%s\t%s\t%s\n' "$st" "$name" "$secs" >>"$results"
done
echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ]
