# definite-agent: build, install as a systemd service, uninstall, test.
#
#   make build                 # as your user: swift build -c release, then the man page and completions
#   sudo make install          # stripped binary, units, sysusers/tmpfiles entries, man page, completions,
#                              # example config (never overwritten)
#   sudo make uninstall        # binary and units only: the configuration, the API key and the spool stay
#   make deb                   # build, then dist/definite-agent_<version>_amd64.deb (scripts/package-deb)
#   make image                 # build, then the OCI image definite-agent:<version> (scripts/build-image)
#   make test                  # every test suite (bash .ci/run)
#
# `make install DESTDIR=/some/dir` stages the same files under /some/dir and touches nothing else (no
# user creation, no systemctl): what a package build needs. `make install` does not build (sudo usually
# cannot find swift); it installs $(BIN) and the man page and completions `make build` made from it.

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
# Vendor locations systemd searches under /usr/local; /etc/systemd/system stays the operator's, for
# overrides (`systemctl edit definite-agent`).
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCDIR      ?= $(PREFIX)/share/doc/definite-agent
MANDIR      ?= $(PREFIX)/share/man
# Where bash-completion, zsh (Debian's fpath has both site-functions directories) and fish look.
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
SYSCONFDIR  ?= /etc
CONFDIR     := $(SYSCONFDIR)/definite-agent
DESTDIR     ?=

SWIFT       ?= swift
BIN         ?= .build/release/definite-agent
# Made from $(BIN) by `make build`: the man page and the shell completions.
SHARE       ?= .build/share
MANPAGE     ?= $(SHARE)/man/definite-agent.1
COMPLETIONS ?= $(SHARE)/completions

INSTALL     ?= install
# What dh_strip does to an executable: no symbols (the Swift runtime's metadata sections stay), no
# .comment/.note sections. The unstripped build stays in .build for debugging.
STRIP       ?= strip --remove-section=.comment --remove-section=.note
SYSTEMCTL   ?= systemctl

# The paths the shipped files name, rewritten to the ones chosen above.
SUBST = sed -e 's|/usr/local/bin/definite-agent|$(BINDIR)/definite-agent|g' \
            -e 's|/usr/local/share/doc/definite-agent|$(DOCDIR)|g' \
            -e 's|/etc/definite-agent|$(CONFDIR)|g'

# Whether this machine runs systemd (the test sd_booted(3) uses); never when staging into DESTDIR.
LIVE = $(if $(DESTDIR),,$(shell [ -d /run/systemd/system ] && echo yes))

.PHONY: all build man completions install uninstall deb image test

all: build

# The commit the binary reports in --version and definite_agent_build_info{commit} ("unknown" outside a
# git checkout).
COMMIT      ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)
# The day of the build (UTC) for --version: SOURCE_DATE_EPOCH's day when set (reproducible builds), else
# today. A day, not a time: a changed define recompiles every module that imports the C shims, so a finer
# stamp would rebuild the whole package at every `make build`.
BUILD_DATE  ?= $(shell date -u $(if $(SOURCE_DATE_EPOCH),-d @$(SOURCE_DATE_EPOCH)) +%Y-%m-%d)
# Every release build here gets the same flags, so that building one product never invalidates another's.
# No RUNPATH $ORIGIN: nothing is loaded from beside the binary (the Swift runtime is linked in statically),
# and an installed binary must search only the system's library directories. `-z now`: every symbol is
# bound at start, so the whole relocation table can be made read-only (full RELRO, as Debian builds).
RELEASE     = $(SWIFT) build -c release --disable-local-rpath -Xlinker -z -Xlinker now \
              -Xcc '-DAGENT_BUILD_COMMIT="$(COMMIT)"' -Xcc '-DAGENT_BUILD_DATE="$(BUILD_DATE)"'

build:
	$(RELEASE) --product definite-agent
	@$(MAKE) --no-print-directory man completions COMMIT="$(COMMIT)" BUILD_DATE="$(BUILD_DATE)"

# The man page from the binary's --help texts, by swift-argument-parser's generate-manual: what its
# GenerateManual plugin runs, built alone (the plugin would build every product of the package first).
man:
	$(RELEASE) --product generate-manual
	mkdir -p "$(dir $(MANPAGE))"
	.build/release/generate-manual "$(BIN)" --date "$(BUILD_DATE)" --output-directory "$(dir $(MANPAGE))"

# swift-argument-parser's completion scripts, from the binary itself. bash-completion sources its files,
# so the bash script loses the #! line it is generated with.
completions:
	mkdir -p "$(COMPLETIONS)"
	"$(BIN)" --generate-completion-script bash | sed '1{/^#!/d}' > "$(COMPLETIONS)/definite-agent.bash"
	"$(BIN)" --generate-completion-script zsh > "$(COMPLETIONS)/_definite-agent"
	"$(BIN)" --generate-completion-script fish > "$(COMPLETIONS)/definite-agent.fish"

install:
	@[ -x "$(BIN)" ] || { echo "error: $(BIN) not found: run 'make build' first (as your user, not root)" >&2; exit 1; }
	@[ -f "$(MANPAGE)" ] && [ -f "$(COMPLETIONS)/definite-agent.bash" ] || \
	    { echo "error: $(MANPAGE) or $(COMPLETIONS) missing: run 'make build' first" >&2; exit 1; }
	@if [ -n "$$(find Sources Package.swift -newer "$(BIN)" -print -quit 2>/dev/null)" ]; then \
	    echo "warning: $(BIN) is older than the sources; run 'make build' to install the current code" >&2; fi
	$(INSTALL) -d -m 0755 "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSUSERSDIR)" \
	    "$(DESTDIR)$(TMPFILESDIR)" "$(DESTDIR)$(DOCDIR)" "$(DESTDIR)$(MANDIR)/man1" \
	    "$(DESTDIR)$(BASHCOMPDIR)" "$(DESTDIR)$(ZSHCOMPDIR)" "$(DESTDIR)$(FISHCOMPDIR)"
	$(INSTALL) -m 0755 "$(BIN)" "$(DESTDIR)$(BINDIR)/definite-agent"
	$(STRIP) "$(DESTDIR)$(BINDIR)/definite-agent"
	$(SUBST) systemd/definite-agent.service > "$(DESTDIR)$(UNITDIR)/definite-agent.service"
	$(SUBST) systemd/definite-agent.socket > "$(DESTDIR)$(UNITDIR)/definite-agent.socket"
	$(SUBST) systemd/tmpfiles.d/definite-agent.conf > "$(DESTDIR)$(TMPFILESDIR)/definite-agent.conf"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/definite-agent.service" "$(DESTDIR)$(UNITDIR)/definite-agent.socket" \
	    "$(DESTDIR)$(TMPFILESDIR)/definite-agent.conf"
	$(INSTALL) -m 0644 systemd/sysusers.d/definite-agent.conf "$(DESTDIR)$(SYSUSERSDIR)/definite-agent.conf"
	gzip -9n < "$(MANPAGE)" > "$(DESTDIR)$(MANDIR)/man1/definite-agent.1.gz"
	chmod 0644 "$(DESTDIR)$(MANDIR)/man1/definite-agent.1.gz"
	$(INSTALL) -m 0644 "$(COMPLETIONS)/definite-agent.bash" "$(DESTDIR)$(BASHCOMPDIR)/definite-agent"
	$(INSTALL) -m 0644 "$(COMPLETIONS)/_definite-agent" "$(DESTDIR)$(ZSHCOMPDIR)/_definite-agent"
	$(INSTALL) -m 0644 "$(COMPLETIONS)/definite-agent.fish" "$(DESTDIR)$(FISHCOMPDIR)/definite-agent.fish"
	$(INSTALL) -m 0644 README.md "$(DESTDIR)$(DOCDIR)/README.md"
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
	    "$(DESTDIR)$(MANDIR)/man1/definite-agent.1.gz" "$(DESTDIR)$(BASHCOMPDIR)/definite-agent" \
	    "$(DESTDIR)$(ZSHCOMPDIR)/_definite-agent" "$(DESTDIR)$(FISHCOMPDIR)/definite-agent.fish" \
	    "$(DESTDIR)$(DOCDIR)/README.md" "$(DESTDIR)$(DOCDIR)/OPERATING.md" "$(DESTDIR)$(DOCDIR)/agent.toml.example"
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

# The package and the image are made from the release build, with the scripts CI checks them with.
deb: build
	scripts/package-deb

image: build
	scripts/build-image

test:
	bash .ci/run
