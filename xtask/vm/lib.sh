# Helpers for the VM scenario scripts (sourced; POSIX sh).
# Everything here runs as root inside the throwaway VM that `cargo xtask vm`
# boots, never on a real machine.

# Refuse to run outside the test VM: the marker is written by xtask/vm/init on
# the guest's own /run tmpfs, and the scratch dir is the host's, over 9p.
require_vm() {
	if [ "${OOMTRACE_IN_VM:-}" != 1 ] || [ ! -e /run/oomtrace-in-vm ] ||
		! grep -q '^scratch /run/oomtrace-scratch 9p ' /proc/mounts; then
		echo "refusing to run: $0 causes OOM kills and must only run inside the VM of 'cargo xtask vm'" >&2
		exit 2
	fi
}

# Print a message and fail the scenario.
die() {
	echo "  error: $*" >&2
	exit 1
}

# Skip the scenario (counted as SKIP, not FAIL).
skip() {
	echo "  skip: $*"
	exit 77
}

# new_cgroup PATH [MEMORY_MAX]: create /sys/fs/cgroup/PATH (parents get +memory).
new_cgroup() {
	_p=/sys/fs/cgroup
	for _c in $(echo "$1" | tr '/' ' '); do
		[ -w "$_p/cgroup.subtree_control" ] && echo +memory >"$_p/cgroup.subtree_control" 2>/dev/null
		_p=$_p/$_c
		mkdir -p "$_p" || die "mkdir $_p"
	done
	if [ -n "${2:-}" ]; then
		echo "$2" >"$_p/memory.max" || die "cannot set memory.max of $_p"
	fi
}

# memory_event CGROUP_PATH KEY: a counter from memory.events.
memory_event() {
	awk -v k="$2" '$1 == k { print $2 }' "/sys/fs/cgroup/$1/memory.events"
}

# run_vm_test NAME: run one test of oomtrace/tests/vm.rs (the compiled test
# binary, $OOMTRACE_VM_TESTS, built on the host by `cargo xtask test`; a
# static build for an arm64 guest).
run_vm_test() {
	bin=${OOMTRACE_VM_TESTS:-}
	if [ -z "$bin" ]; then
		bin=$(ls -t "$OOMTRACE_REPO"/target/debug/deps/vm-* 2>/dev/null | grep -v '\.d$' | head -n 1)
	fi
	[ -x "$bin" ] || die "no VM test binary (OOMTRACE_VM_TESTS unset and none under target/debug/deps): run cargo xtask test"
	cd "$SCRATCH" || die "no scratch dir"
	RUST_BACKTRACE=1 "$bin" --ignored --exact "$1" --nocapture --test-threads=1
}
