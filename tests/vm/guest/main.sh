# kproxy VM, stage 2: PID 1 (bash) on the final root, the host's userland. Copied into the run
# share for every run by vmrun.py. Finishes the mounts, loads the requested modules, runs
# cmd.sh (the command, as root, in the caller's cwd and environment) with its output on the
# serial console, records its exit status in the run share and powers the VM off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
share=/run/kproxy-vm
# shellcheck source=/dev/null
. "$share/config"

mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2> /dev/null
mount -t bpf bpf /sys/fs/bpf 2> /dev/null
ln -sfn /proc/self/fd /dev/fd
stty -F /dev/console -onlcr 2> /dev/null   # plain \n on the console
hostname kproxy-vm
ip link set lo up

for module in $modules; do
    modprobe "$module" || echo "kproxy-vm: modprobe $module failed" > /dev/console
done

read -r up _ < /proc/uptime
echo "KPROXY_VM_READY uptime=$up" > /dev/console
bash "$share/cmd.sh" < /dev/null > /dev/console 2>&1
rc=$?
echo "$rc" > "$share/status"
sync
read -r up _ < /proc/uptime
echo "KPROXY_VM_EXIT=$rc uptime=$up" > /dev/console
/bin/busybox poweroff -f
echo o > /proc/sysrq-trigger
sleep 10
