# shellcheck shell=bash
# scripts/test's options for the VM kernel matrix (tests/vm/README.md). Sourced by it.
#
#   --kernel SERIES   run the VM tests on this kernel only (repeatable: 5.10, 6.1, 6.12)
#   --host-only       no VM tests at all
#
# vm_parse_args "$@" sets KPROXY_KERNELS (exported; "all" unless an option or the caller's
# environment says otherwise), pytest_args (the arguments that are not ours) and
# setup_env_args (for scripts/setup-env: --vm and the kernels, unless KPROXY_KERNELS=none).

vm_parse_args() {
    pytest_args=()
    local kernels=() host_only=0
    while (($#)); do
        case $1 in
            --host-only) host_only=1 ;;
            --kernel=*) kernels+=("${1#--kernel=}") ;;
            --kernel)
                if (($# < 2)); then
                    echo "scripts/test: --kernel needs a kernel series (5.10, 6.1, 6.12)" >&2
                    return 2
                fi
                kernels+=("$2")
                shift
                ;;
            *) pytest_args+=("$1") ;;
        esac
        shift
    done
    if ((host_only)); then
        KPROXY_KERNELS=none
    elif ((${#kernels[@]})); then
        KPROXY_KERNELS=$(IFS=,; echo "${kernels[*]}")
    else
        KPROXY_KERNELS=${KPROXY_KERNELS:-all}
    fi
    export KPROXY_KERNELS
    setup_env_args=()
    case $KPROXY_KERNELS in
        none) ;;
        all) setup_env_args=(--vm) ;;
        *) IFS=', ' read -r -a setup_env_args <<<"$KPROXY_KERNELS"
           setup_env_args=(--vm "${setup_env_args[@]}") ;;
    esac
}
