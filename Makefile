# Quick start: `make demo` and `make test` install what they need (Debian packages through
# apt-get when missing, a virtualenv with the Python packages) and are quick once set up.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian 12 packages: build headers for PyGObject, dbus-python, libvirt-python and
# systemd-python; umockdev and FUSE for the emulated host; dbus-daemon for private buses;
# mdevctl, which the benchmarks run side by side with gvtd; polkitd, whose DTD and daemon
# check the shipped polkit actions; libvirtd with the QEMU driver (libvirt-daemon-system
# creates the libvirt-qemu user it needs) and virsh, for the tests on a private libvirtd;
# virt-xml-validate (libvirt-clients, with xmllint from libxml2-utils) checks gvtd's XML edits.
DEB_PACKAGES = pkg-config gcc python3-dev libgirepository1.0-dev libcairo2-dev \
	libdbus-1-dev libglib2.0-dev libvirt-dev libsystemd-dev \
	umockdev gir1.2-umockdev-1.0 fuse3 dbus-daemon libxml2-utils systemd mdevctl \
	polkitd libvirt-daemon-system libvirt-clients qemu-system-x86

# doctor's gtk-gl check runs xhost as QEMU's user against a real X server (Xvfb in tests).
DEB_PACKAGES += xvfb x11-xserver-utils xauth
# A GL start follows the desktop session (tests/integration/test_session.py): QEMU opens its
# GTK window (qemu-system-gui) on Xvfb as an X11 session and on the Xwayland of weston's
# headless backend as a Wayland one.
DEB_PACKAGES += qemu-system-gui weston xwayland

# Packaging: man-db renders the generated man pages; bash, zsh and fish run the generated
# completions; debhelper, dh-python and lintian build and check the .deb, and
# mmdebstrap makes the fresh Debian roots it is built and installed in (the RPM and the Arch
# package are built in one too); rpm (rpmspec, rpm -q) and rpmlint read and check the RPM.
# python3-dbus-fast: a private libvirtd runs the libvirt hook with the system's python3.
DEB_PACKAGES += man-db zsh fish debhelper dh-python pybuild-plugin-pyproject \
	python3-setuptools lintian mmdebstrap python3-dbus-fast rpm rpmlint
# strace kills gvtd at one chosen syscall (fault injection) in the crash tests.
DEB_PACKAGES += strace

# gdbus (libglib2.0-bin) runs the gdbus script in examples/ (busctl comes with systemd).
DEB_PACKAGES += libglib2.0-bin

# gvt-client setup's tests run the host's real boot tools in a throw-away root: grub-common
# ships grub-mkconfig, grub-probe and /etc/grub.d, grub2-common update-grub (neither installs
# a boot loader or touches this machine's boot); kernel-install comes with systemd (above).
DEB_PACKAGES += grub-common grub2-common

# desktop-file-validate (desktop-file-utils) judges the launcher `gvt-client desktop-entry`
# writes.
DEB_PACKAGES += desktop-file-utils

# A VM's sound: a real PulseAudio daemon (pulseaudio) runs as the test's unprivileged user,
# gvt-client opens its socket with pactl (pulseaudio-utils) and lets QEMU's user reach it
# with setfacl (acl), which the tests read back with getfacl.
DEB_PACKAGES += pulseaudio pulseaudio-utils acl
# The same on a PipeWire desktop: PipeWire's daemon and the pipewire binary (pipewire,
# pipewire-bin: gvt-client runs `pipewire -c` for the VM's socket) and its pulse server
# (pipewire-pulse) as the test's user; on Debian 12 they install beside pulseaudio, which
# they neither conflict with nor replace (no wireplumber: no devices to manage here).
DEB_PACKAGES += pipewire pipewire-bin pipewire-pulse

# `gvt-client new`: ovmf (UEFI with Secure Boot and Microsoft's keys, and the descriptors
# libvirt selects it by), swtpm and swtpm-tools (Windows 11's TPM 2.0, set up by libvirtd),
# qemu-utils (qemu-img: libvirt makes the qcow2 disk with it, the tests read it back) and
# dnsmasq-base (libvirt's NAT network, started in the tests' private libvirtd); virt-viewer
# for `gvt-client view`.
DEB_PACKAGES += ovmf swtpm swtpm-tools qemu-utils dnsmasq-base virt-viewer

# driverctl, the way users keep a device on vfio-pci today: the SR-IOV benchmark runs its
# `driverctl --nosave set-override` per VF beside gvtd (systemd-tmpfiles, its other half,
# comes with systemd above).
DEB_PACKAGES += driverctl

# End-to-end VM (tests/e2e): mke2fs -d makes its disk from a directory and debugfs reads
# the guest's journal back out of it; QEMU (above) boots it.
DEB_PACKAGES += e2fsprogs

.PHONY: all setup deps test e2e demo bench docs clean
all: test

$(VENV)/.debs: Makefile
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: $(VENV)/.debs pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The VM test alone (also part of `make test`); docs/e2e.md.
e2e: setup
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

demo: setup
	$(PY) -m gvtd.sim.demo

bench: setup
	$(PY) bench/run.py

# Generated reference pages (a test fails when the committed copy is stale).
docs: setup
	$(PY) -m gvtd.apidoc docs/dbus-api.md

clean:
	rm -rf $(VENV) build *.egg-info
