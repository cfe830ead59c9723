#!/bin/bash
# Start a libvirt domain through gvtd, with its vGPUs, and wait until it runs: gdbus (GLib).
#
#   start-vm-gdbus.sh [--system | --session] DOMAIN
#
# GVTD_BUS=system|session picks the bus when no option does (default: system; session is
# for `gvtd --simulate`); GVTD_WAIT is how many seconds to wait for it to run (default 120).
# Exit status: 0 running, 1 gvtd refused or the domain did not come up (the message says
# why), 2 usage.
#
# It listens before it asks: `gdbus monitor` (an ordinary match rule, allowed to any user on
# the system bus) follows gvtd's signals, then StartDomain starts the domain, then the
# Domain object's State is read once; if it is not running yet, the State's
# PropertiesChanged signals say when it is. Nothing polls.
set -euo pipefail

SERVICE=io.github.gvtd1
DOMAIN_IFACE=io.github.gvtd1.Domain
bus=${GVTD_BUS:-system}
wait=${GVTD_WAIT:-120}
domain=

usage() {
    echo "usage: $0 [--system | --session] DOMAIN" >&2
    exit 2
}

fail() {
    echo "$0: $*" >&2
    exit 1
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
    system | session) flag=--$bus ;;
    *) echo "$0: GVTD_BUS must be system or session, not '$bus'" >&2; exit 2 ;;
esac
interactive=()
[ -t 0 ] && interactive=(--interactive)  # a polkit agent may ask for a password

errors=$(mktemp)
coproc MONITOR { exec gdbus monitor "$flag" --dest "$SERVICE" 2>/dev/null; }
exec {signals}<&"${MONITOR[0]}"
monitor=$MONITOR_PID  # (bash forgets MONITOR_PID once it exits)
trap 'kill "$monitor" 2>/dev/null || true; rm -f "$errors"' EXIT
# gdbus monitor prints who owns the name, then subscribes to that owner's signals.
while IFS= read -r -t 10 line <&"$signals"; do
    case $line in *" is owned by "* | *" does not have an owner"*) break ;; esac
done

# Creates the vGPUs the domain uses, then starts it; the reply comes once libvirt has.
if ! reply=$(gdbus call "$flag" "${interactive[@]}" --timeout 300 --dest "$SERVICE" \
        --object-path /io/github/gvtd1 --method io.github.gvtd1.Manager.StartDomain \
        "$domain" '@a{sv} {}' 2>"$errors"); then
    fail "cannot start $domain: $(sed 's/^Error: GDBus.Error:[^ ]*: //' "$errors")"
fi
path=$(sed -n "s/^(objectpath '\(.*\)',)$/\1/p" <<<"$reply")

# gvtd shows a Domain object only for a domain with a vGPU.
if ! reply=$(gdbus call "$flag" --dest "$SERVICE" --object-path "$path" \
        --method org.freedesktop.DBus.Properties.Get "$DOMAIN_IFACE" State 2>"$errors"); then
    echo "$domain started (it has no vGPU, so gvtd does not follow its state)"
    exit 0
fi
state=$(sed -n "s/^(<'\(.*\)'>,)$/\1/p" <<<"$reply")

deadline=$((SECONDS + wait))
while [ "$state" != running ]; do
    case $state in
        shut-off | crashed) fail "$domain is $state; \`virsh domstate --reason $domain\` says why" ;;
    esac
    echo "$domain is $state; waiting for it to run..."
    while true; do
        left=$((deadline - SECONDS))
        [ "$left" -gt 0 ] && IFS= read -r -t "$left" line <&"$signals" ||
            fail "$domain is still $state after ${wait} s"
        case $line in
            *" does not have an owner") fail "gvtd went away while starting $domain" ;;
            "$path: org.freedesktop.DBus.Properties.PropertiesChanged ('$DOMAIN_IFACE', "*"'State': <'"*)
                state=$(sed -n "s/.*'State': <'\([^']*\)'>.*/\1/p" <<<"$line")
                break ;;
        esac
    done
done
echo "$domain is running"
