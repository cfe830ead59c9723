#!/bin/sh
# Start a libvirt domain through gvtd, with its vGPUs, and wait until it runs: busctl (systemd).
#
#   start-vm-busctl.sh [--system | --session] DOMAIN
#
# GVTD_BUS=system|session picks the bus when no option does (default: system; session is
# for `gvtd --simulate`). Exit status: 0 running, 1 gvtd refused or the domain is not
# running (the message says why), 2 usage.
#
# busctl can only wait for a signal through `busctl monitor`, which only root may run on the
# system bus. So this script waits on StartDomain's reply instead: gvtd answers once libvirt
# has started the domain and it has read the domain's new state, so the Domain object's
# State, read right after, says how the start went. start-vm-gdbus.sh and start-vm.py also
# follow the State's PropertiesChanged signals.
set -eu

SERVICE=io.github.gvtd1
bus=${GVTD_BUS:-system}
domain=

usage() {
    echo "usage: $0 [--system | --session] DOMAIN" >&2
    exit 2
}

for arg; do
    case $arg in
        --system) bus=system ;;
        --session) bus=session ;;
        -*) usage ;;
        *) [ -z "$domain" ] || usage; domain=$arg ;;
    esac
done
[ -n "$domain" ] || usage
case $bus in
    system) flag=--system ;;
    session) flag=--user ;;  # busctl's name for the session bus
    *) echo "$0: GVTD_BUS must be system or session, not '$bus'" >&2; exit 2 ;;
esac

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

# Creates the vGPUs the domain uses, then starts it; a polkit agent may ask for a password.
if ! reply=$(busctl "$flag" --timeout=300 call "$SERVICE" /io/github/gvtd1 \
        io.github.gvtd1.Manager StartDomain 'sa{sv}' "$domain" 0 2>"$errors"); then
    echo "$0: cannot start $domain: $(sed 's/^Call failed: //' "$errors")" >&2
    exit 1
fi
path=${reply#o \"}
path=${path%\"}

# gvtd shows a Domain object only for a domain with a vGPU.
if ! state=$(busctl "$flag" get-property "$SERVICE" "$path" io.github.gvtd1.Domain State \
        2>"$errors"); then
    echo "$domain started (it has no vGPU, so gvtd does not follow its state)"
    exit 0
fi
state=${state#s \"}
state=${state%\"}
if [ "$state" != running ]; then
    echo "$0: $domain is $state after starting; \`virsh domstate --reason $domain\` says why" >&2
    exit 1
fi
echo "$domain is running"
