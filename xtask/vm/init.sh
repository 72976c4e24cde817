#!/bin/sh
# /init of oomlab's test VMs (cargo xtask vm-test): mounts what the tests need with cgroup v2 and
# the memory controller enabled for children, runs `oomlab doctor` and then every planned test
# alone, and reports on the serial console with `@@OOMLAB-VM` marker lines the host parses.
# The plan (/vm/plan: group<TAB>binary<TAB>test per line) and /vm/env (the oomlab binary, the
# per-test deadline, extra libtest arguments such as a benchmark's --ignored) are written by the
# host.

/bin/busybox mkdir -p /proc /sys /dev /tmp /root /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root

say() { echo "@@OOMLAB-VM $*"; }
fail_setup() { say "setup-error $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# /tmp and /var/tmp on a real filesystem (an ext4 image on NVMe, both built into Debian's cloud
# kernels), as on the hosts: page cache there is reclaimable, unlike tmpfs/rootfs pages.
mkdir -p /mnt/disk /var/tmp
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/nvme0n1 ] && break; sleep 0.5; done
if mount -t ext4 /dev/nvme0n1 /mnt/disk; then
    mkdir -p /mnt/disk/tmp /mnt/disk/var-tmp
    chmod 1777 /mnt/disk/tmp /mnt/disk/var-tmp
    # The payload sits at its host paths, which are under /tmp when the workspace is (a CI
    # clone may be): carry it over, or the bind mount would hide the test binaries.
    cp -a /tmp/. /mnt/disk/tmp/ || fail_setup "cannot copy /tmp onto the scratch disk"
    mount --bind /mnt/disk/tmp /tmp
    mount --bind /mnt/disk/var-tmp /var/tmp
else
    fail_setup "cannot mount the scratch disk /dev/nvme0n1 (ext4) for /tmp and /var/tmp"
    mount -t tmpfs tmpfs /tmp
fi
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing || fail_setup "cannot mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail_setup "cannot mount cgroup2 at /sys/fs/cgroup"
echo +memory >/sys/fs/cgroup/cgroup.subtree_control ||
    fail_setup "cannot enable +memory in /sys/fs/cgroup/cgroup.subtree_control"
ulimit -l unlimited
hostname oomlab-vm
# Loopback only (oomlab serve's tests talk HTTP to 127.0.0.1); no other network.
ip link set lo up || fail_setup "cannot bring up lo"

. /vm/env
kernel_tag=$(sed -n 's/.*oomlab\.kernel=\([^ ]*\).*/\1/p' /proc/cmdline)
# oomlab.only=TEST: a boot for one test of the plan (the psi=0 boot).
only=$(sed -n 's/.*oomlab\.only=\([^ ]*\).*/\1/p' /proc/cmdline)
export OOMLAB_VM=1 OOMLAB_VM_KERNEL="$kernel_tag" RUST_BACKTRACE=1
say "boot $(uname -r) cgroup.subtree_control=[$(cat /sys/fs/cgroup/cgroup.subtree_control)]"

say "doctor-begin"
"$OOMLAB_BIN" doctor --output json </dev/null 2>/tmp/doctor.err
rc=$?
say "doctor-end $rc"
sed 's/^/@@OOMLAB-VM doctor-stderr /' /tmp/doctor.err

tab=$(printf '\t')
while IFS="$tab" read -r group bin name; do
    [ -n "$name" ] || continue
    [ -z "$only" ] || [ "$name" = "$only" ] || continue
    say "test-begin $group $name"
    (cd /tmp && timeout -s KILL "$OOMLAB_TEST_TIMEOUT" \
        "$bin" --exact "$name" --test-threads=1 --nocapture $OOMLAB_TEST_ARGS </dev/null 2>&1)
    rc=$?
    # A test that leaves cgroups behind must not disturb the next one; say so, the host
    # reports it with the test.
    left=$(ls -d /sys/fs/cgroup/oomlab-test/*/ 2>/dev/null | tr '\n' ' ')
    [ -z "$left" ] || say "test-leftover $group $name $left"
    say "test-end $group $name $rc"
done </vm/plan

say "done"
sync
poweroff -f
