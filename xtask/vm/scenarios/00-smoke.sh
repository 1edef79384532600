#!/bin/sh
# Smoke test of the VM itself: cgroup v2 memory controller, tracefs with
# oom:mark_victim, BTF, kprobe availability on oom_kill_process, and a real
# memcg OOM kill counted in memory.events.
. "$(dirname "$0")/../lib.sh"
require_vm

echo "  kernel $(uname -r) on $(uname -m)"

# cgroup v2 with the memory controller.
grep -qw memory /sys/fs/cgroup/cgroup.controllers || die "no memory controller in cgroup v2"
grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || die "memory controller not enabled in subtree_control"

# tracefs and the mark_victim tracepoint; its fields tell the ABI.
fmt=/sys/kernel/tracing/events/oom/mark_victim/format
[ -r "$fmt" ] || die "no $fmt"
if grep -q 'field:.*total_vm' "$fmt"; then abi=extended; else abi=pid-only; fi
echo "  mark_victim ABI: $abi"
sed -n 's/^[[:space:]]*field:/    field:/p' "$fmt" | grep -v 'common_'
cp "$fmt" "$SCRATCH/mark_victim.format" 2>/dev/null

# BTF.
[ -r /sys/kernel/btf/vmlinux ] || die "no /sys/kernel/btf/vmlinux"
echo "  BTF: /sys/kernel/btf/vmlinux $(wc -c </sys/kernel/btf/vmlinux) bytes"

# kprobes on oom_kill_process.
grep -q ' oom_kill_process$' /proc/kallsyms || die "oom_kill_process not in /proc/kallsyms"
ke=/sys/kernel/tracing/kprobe_events
if [ -w "$ke" ] && echo 'p:oomtest oom_kill_process' >>"$ke" 2>/dev/null; then
	echo "  kprobe on oom_kill_process: yes"
	echo '-:oomtest' >>"$ke"
else
	echo "  kprobe on oom_kill_process: NO"
	echo no >"$SCRATCH/kprobe-unavailable"
fi

# fentry on oom_kill_process needs a BTF FUNC for it and an ftrace site.
# (Indicators only: loading a BPF program is the real test.)
if grep -qa 'oom_kill_process' /sys/kernel/btf/vmlinux; then btf_fn=yes; else btf_fn=no; fi
if grep -qx 'oom_kill_process' /sys/kernel/tracing/available_filter_functions 2>/dev/null; then ftr=yes; else ftr=no; fi
echo "  fentry indicators: oom_kill_process name in BTF: $btf_fn, in available_filter_functions: $ftr"

# A memcg OOM: a 200 MiB allocation in a cgroup with memory.max=50M (dd's
# buffer, filled from /dev/zero: coreutils on the host root, busybox in an
# arm64 guest).
cg=smoke
new_cgroup $cg 50M
echo 0 >/sys/fs/cgroup/$cg/memory.swap.max 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
sh -c "echo \$\$ >/sys/fs/cgroup/$cg/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null"
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
kills=$(memory_event $cg oom_kill)
echo "  allocator exit status $rc (137 = SIGKILL), memory.events oom_kill=$kills, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
[ "$rc" -eq 137 ] || die "the allocator was not SIGKILLed (exit $rc)"
[ "$kills" = 1 ] || die "memory.events oom_kill is $kills, want 1"
rmdir /sys/fs/cgroup/$cg
