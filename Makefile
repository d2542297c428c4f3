# vmfest — see README.md.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

BUILD   := build
VMFEST  := $(BUILD)/vmfest
IMAGE   := $(BUILD)/vmfest-tiny.qcow2
META    := $(BUILD)/vmfest-tiny.meta
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all deps build image demo test test-short test-race vet fuzz bench clean
.PHONY: cloud-image test-cloud
.PHONY: deb test-deb

all: build

deps:
	@bash scripts/install-deps.sh

build:
	go build -ldflags "-X main.version=$(VERSION)" -o $(VMFEST) ./cmd/vmfest

# The tiny guest (kernel, busybox, dropbear, the vmfest agent) from Debian packages.
image: deps
	bash guest/build-image.sh $(BUILD)
	bash scripts/package-image.sh $(BUILD)

# Install the tiny image as a model from a local web server, then create
# and start a machine from it.
demo: deps build image
	@bash scripts/demo.sh $(VMFEST) $(BUILD)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	go vet ./...

# Unit tests plus the end-to-end suite, which boots real guests; then the
# unit and concurrency tests again under the race detector.
test: deps image vet
	VMFEST_TEST_IMAGE=$(abspath $(META)) go test -count=1 -timeout 25m ./...
	$(MAKE) test-race

test-race:
	go test -race -short -count=1 -timeout 15m ./...

# A real Debian 12 cloud image (cloud-init, qemu-guest-agent, OpenSSH) from
# Debian's packages with debootstrap; as root. Skipped when up to date.
CLOUD_META := $(BUILD)/debian-cloud.meta
cloud-image:
	bash scripts/build-cloud-image.sh $(BUILD)

# The cloud-init suite: boots the real cloud image (about a minute under TCG).
test-cloud: cloud-image
	VMFEST_CLOUD_IMAGE=$(abspath $(CLOUD_META)) go test -count=1 -v -timeout 20m ./test/cloud/

# The Debian package (packaging/deb): build/vmfest_<version>_amd64.deb.
deb:
	bash scripts/build-deb.sh $(BUILD)

# Build it, lintian (no errors), dpkg -i, check the groups, the unit and
# the system instance, dpkg -r (keeps /var/lib/vmfest), purge; as root.
# Not part of make test: it installs a package on this machine.
test-deb: image
	@bash scripts/install-deps.sh deb
	bash scripts/build-deb.sh --test $(BUILD)

# Unit tests only: no guest is booted.
test-short: vet
	go test -short -count=1 ./...

# Benchmarks side by side with their baselines; writes docs/BENCHMARKS.md and docs/bench.png.
bench: deps build image
	go run ./bench -image $(META) -out docs/BENCHMARKS.md
	go test -run '^$$' -bench . -benchtime 100x . | tee -a docs/BENCHMARKS.md.gobench
	@{ echo; echo '## Go benchmarks (`go test -run "^$$" -bench . -benchtime 100x .`)'; echo; echo '```'; grep -E '^(Benchmark|goos|goarch|cpu)' docs/BENCHMARKS.md.gobench; echo '```'; } >> docs/BENCHMARKS.md; rm -f docs/BENCHMARKS.md.gobench
	go test -run '^$$' -bench Instance -benchtime 100x ./driver/libvirt/ | tee docs/BENCHMARKS.md.libvirt
	go test -run '^$$' -bench StartToReady -benchtime 5x ./driver/libvirt/ | tee -a docs/BENCHMARKS.md.libvirt
	@{ echo; echo '## The libvirt driver beside the QEMU driver (`go test -run "^$$" -bench Instance -benchtime 100x ./driver/libvirt/`, then `-bench StartToReady -benchtime 5x`; as root, with a libvirtd of the test'"'"'s own)'; echo; echo 'Both drivers side by side in one run: `Instance` on a Local whose driver is libvirt or QEMU (creating a machine does not involve its driver), and `Start` (define and launch; `start-s`) until the guest agent answers (`ready-s`) on one overlay of the tiny image with one NAT NIC.'; echo; echo '```'; grep -E '^(Benchmark|goos|goarch|cpu)' docs/BENCHMARKS.md.libvirt; echo '```'; echo; echo 'libvirt'"'"'s start (`start-s`) is its define, a paused launch, the NAT forwards added through the monitor and the resume; the first start after libvirtd comes up also waits for libvirt to probe QEMU, and every start does where libvirt'"'"'s QEMU user cannot open `/dev/kvm` (see `docs/libvirt.md`).'; } >> docs/BENCHMARKS.md; rm -f docs/BENCHMARKS.md.libvirt

# Each fuzz test for FUZZTIME, a duration or a count such as 2000x (CI runs
# a count: see .ci/run; run longer on demand).
FUZZTIME ?= 10s
FUZZ := ./spec:FuzzParseHardware ./spec:FuzzParseImage ./store:FuzzValidateName ./driver/qemu:FuzzQMPReply ./driver/qemu:FuzzAgentReply ./image:FuzzParseMeta ./image:FuzzInspect ./image:FuzzHostileInstall ./disk:FuzzParseQCOW2Header
fuzz:
	@for f in $(FUZZ); do pkg=$${f%%:*}; fn=$${f##*:}; echo "fuzz $$fn ($$pkg) for $(FUZZTIME)"; go test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

clean:
	rm -rf $(BUILD)
