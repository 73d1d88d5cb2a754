# definite-agent: build, install as a systemd service, uninstall, test.
#
#   make build                 # as your user: swift build -c release
#   sudo make install          # binary, units, sysusers/tmpfiles entries, example config (never overwritten)
#   sudo make uninstall        # binary and units only: the configuration, the API key and the spool stay
#   make test                  # every test suite (bash .ci/run)
#
# `make install DESTDIR=/some/dir` stages the same files under /some/dir and touches nothing else (no
# user creation, no systemctl): what a package build needs. `make install` does not build (sudo usually
# cannot find swift); it installs $(BIN), built by `make build`.

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
# Vendor locations systemd searches under /usr/local; /etc/systemd/system stays the operator's, for
# overrides (`systemctl edit definite-agent`).
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/definite-agent
SYSCONFDIR  ?= /etc
CONFDIR     := $(SYSCONFDIR)/definite-agent
DESTDIR     ?=

SWIFT       ?= swift
BIN         ?= .build/release/definite-agent

INSTALL     ?= install
SYSTEMCTL   ?= systemctl

# The paths the shipped files name, rewritten to the ones chosen above.
SUBST = sed -e 's|/usr/local/bin/definite-agent|$(BINDIR)/definite-agent|g' \
            -e 's|/usr/local/share/doc/definite-agent|$(DOCDIR)|g' \
            -e 's|/etc/definite-agent|$(CONFDIR)|g'

# Whether this machine runs systemd (the test sd_booted(3) uses); never when staging into DESTDIR.
LIVE = $(if $(DESTDIR),,$(shell [ -d /run/systemd/system ] && echo yes))

.PHONY: all build install uninstall test

all: build

# The commit the binary reports in definite_agent_build_info{commit} ("unknown" outside a git checkout).
COMMIT      ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)

build:
	$(SWIFT) build -c release --product definite-agent -Xcc '-DAGENT_BUILD_COMMIT="$(COMMIT)"'

install:
	@[ -x "$(BIN)" ] || { echo "error: $(BIN) not found: run 'make build' first (as your user, not root)" >&2; exit 1; }
	@if [ -n "$$(find Sources Package.swift -newer "$(BIN)" -print -quit 2>/dev/null)" ]; then \
	    echo "warning: $(BIN) is older than the sources; run 'make build' to install the current code" >&2; fi
	$(INSTALL) -d -m 0755 "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" \
	    "$(DESTDIR)$(TMPFILESDIR)" "$(DESTDIR)$(DOCDIR)"
	$(INSTALL) -m 0755 "$(BIN)" "$(DESTDIR)$(BINDIR)/definite-agent"
	$(SUBST) systemd/definite-agent.service > "$(DESTDIR)$(UNITDIR)/definite-agent.service"
	$(SUBST) systemd/definite-agent.socket > "$(DESTDIR)$(UNITDIR)/definite-agent.socket"
	$(SUBST) systemd/tmpfiles.d/definite-agent.conf > "$(DESTDIR)$(TMPFILESDIR)/definite-agent.conf"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/definite-agent.service" "$(DESTDIR)$(UNITDIR)/definite-agent.socket" \
	    "$(DESTDIR)$(TMPFILESDIR)/definite-agent.conf"
	$(INSTALL) -m 0644 systemd/sysusers.d/definite-agent.conf "$(DESTDIR)$(SYSUSERSDIR)/definite-agent.conf"
	$(INSTALL) -m 0644 docs/OPERATING.md "$(DESTDIR)$(DOCDIR)/OPERATING.md"
	$(INSTALL) -m 0644 etc/definite-agent/agent.toml "$(DESTDIR)$(DOCDIR)/agent.toml.example"
	$(INSTALL) -d -m 0750 "$(DESTDIR)$(CONFDIR)"
	@if [ -e "$(DESTDIR)$(CONFDIR)/agent.toml" ]; then \
	    echo "kept the existing $(DESTDIR)$(CONFDIR)/agent.toml (the shipped example is $(DOCDIR)/agent.toml.example)"; \
	else \
	    echo "$(INSTALL) -m 0640 etc/definite-agent/agent.toml $(DESTDIR)$(CONFDIR)/agent.toml"; \
	    $(INSTALL) -m 0640 etc/definite-agent/agent.toml "$(DESTDIR)$(CONFDIR)/agent.toml"; \
	fi
ifneq ($(LIVE),)
	systemd-sysusers "$(SYSUSERSDIR)/definite-agent.conf"
	systemd-tmpfiles --create "$(TMPFILESDIR)/definite-agent.conf"
	$(SYSTEMCTL) daemon-reload
else ifeq ($(DESTDIR),)
	@echo "systemd is not running here (a container?): skipped creating the definite-agent user"
	@echo "(systemd-sysusers), its directories (systemd-tmpfiles --create) and 'systemctl daemon-reload';"
	@echo "they happen at the next boot of a systemd machine with these files installed."
else
	@echo "staged under $(DESTDIR): no user created, nothing reloaded."
endif
	@echo
	@echo "Installed. To start it:"
	@echo "  install -m 600 /path/to/key $(CONFDIR)/api-key"
	@echo "  systemctl enable --now definite-agent.socket definite-agent.service"
	@echo "Upgrading? 'systemctl restart definite-agent' (the spool and the socket carry over)."

uninstall:
ifneq ($(LIVE),)
	-$(SYSTEMCTL) disable --now definite-agent.service definite-agent.socket
endif
	rm -f "$(DESTDIR)$(BINDIR)/definite-agent" \
	    "$(DESTDIR)$(UNITDIR)/definite-agent.service" "$(DESTDIR)$(UNITDIR)/definite-agent.socket" \
	    "$(DESTDIR)$(SYSUSERSDIR)/definite-agent.conf" "$(DESTDIR)$(TMPFILESDIR)/definite-agent.conf" \
	    "$(DESTDIR)$(DOCDIR)/OPERATING.md" "$(DESTDIR)$(DOCDIR)/agent.toml.example"
	rmdir "$(DESTDIR)$(DOCDIR)" 2>/dev/null || true
ifneq ($(LIVE),)
	$(SYSTEMCTL) daemon-reload
endif
	@echo
	@echo "Removed the binary and the units. Kept, on purpose:"
	@echo "  $(CONFDIR)  (the configuration and the API key)"
	@echo "  /var/lib/definite-agent  (the spool: rows not yet delivered, and dead letters)"
	@echo "  the definite-agent user and group"
	@echo "Delete them by hand only if you are sure: rm -r $(CONFDIR) /var/lib/definite-agent; userdel definite-agent"

test:
	bash .ci/run
