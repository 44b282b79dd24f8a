# fedmsg-wallboard: `make run` (the demo) and `make test` do all the set-up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo
DEMO_PORT ?= 8080
DEMO_BUS ?= tcp://127.0.0.1:9940
DEMO_RATE ?= 40
export FEDMSG_CONFIG := $(CURDIR)/fedmsg.d

.PHONY: install sysdeps run run-amqp run-ha test test-fast test-faults test-ha bench man dist clean

# Debian packages: Kerberos headers (gssapi, via fasjson-client), a real
# redis-server (tests), chromium (browser tests), fonts for screenshots.
# Fedora: dnf install krb5-devel redis chromium
sysdeps:
	@missing=""; \
	command -v krb5-config >/dev/null || missing="$$missing libkrb5-dev"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v gource >/dev/null || missing="$$missing gource"; \
	command -v xvfb-run >/dev/null || missing="$$missing xvfb"; \
	command -v xauth >/dev/null || missing="$$missing xauth"; \
	[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v man >/dev/null || missing="$$missing man-db"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	[ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    echo "installing:$$missing"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  else \
	    echo "please install:$$missing (Fedora: dnf install krb5-devel redis chromium)"; exit 1; \
	  fi; \
	fi

$(STAMP): setup.py pyproject.toml constraints.txt
	$(MAKE) sysdeps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt 'setuptools<81' wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[test,fedora]'
	touch $(STAMP)

install: $(STAMP)

## The demo: embedded Redis, a looping replay of real messages, listener, page.
run: $(STAMP)
	@$(BIN)/python -m listener.tools.demo --dir $(DEMO_DIR) --port $(DEMO_PORT) --bus $(DEMO_BUS) --rate $(DEMO_RATE)

## The same demo on today's Fedora bus: a RabbitMQ shaped like Fedora's public broker
## (TLS, client certificates, vhost /public_pubsub; started and stopped by the demo,
## data in $(DEMO_DIR)/broker) fed with today's-bus corpus as native fedora-messaging
## messages, the listener reading it through a fedora.toml of Fedora's shape.
AMQP_CORPUS ?= $(CURDIR)/../shared/corpus/amqp/today_bus.jsonl
run-amqp: $(STAMP)
	@$(BIN)/python -m listener.tools.demo --dir $(DEMO_DIR) --port $(DEMO_PORT) --rate $(DEMO_RATE) --fedora-broker --native '$(AMQP_CORPUS)'

## The highly available topology on one machine (docs/SCALING.md): 3 redis-server
## and 3 sentinels, 2 listeners (one writes, one stands by), 3 web nodes behind
## haproxy on $(HA_WEB_PORT), a looping replay; state and logs in $(HA_DIR).
HA_DIR ?= .demo-ha
HA_WEB_PORT ?= 8080
HA_BASE_PORT ?= 6390
HA_BUS ?= 9950
run-ha: $(STAMP)
	@$(BIN)/python -m listener.tools.ha_demo --dir $(HA_DIR) --web-port $(HA_WEB_PORT) --base-port $(HA_BASE_PORT) --bus $(HA_BUS) --rate $(DEMO_RATE)

## The test suite (real Redis, real ZeroMQ, real websockets, real chromium), with
## branch coverage of the package, the processes the tests start included; the
## core's figure must stay at 95 % or more.
test: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -m "not faults and not ha" --cov --cov-report= tests
	@echo "coverage of listener/core (at least 95 %):"
	$(BIN)/coverage report --include='listener/core/*' --fail-under=95
	@echo "coverage of the whole package:"
	@$(BIN)/coverage report | tail -n 1

## The pure core's tests alone: seconds, no server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/core

## Longer fault injections (Redis outages, dead links, slow clients).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -m faults tests

## Failovers under a live replay: Redis Sentinel (master killed, frozen), the
## listeners (holder killed, frozen): messages lost / double-counted per topic.
test-ha: $(STAMP)
	$(BIN)/python -m pytest -m ha -s tests/ha

## The man page and the bash/zsh completions, from the CLI's parser (committed:
## the wheel installs them; tests/cli checks they are current).
man: $(STAMP)
	$(BIN)/argparse-manpage --module listener.cli --function build_parser \
	  --project-name fedmsg-wallboard --prog fedmsg-wallboard \
	  --version "$$($(BIN)/python -c 'import listener; print(listener.__version__)')" \
	  --description "watch the Fedora message bus and show its activity on a wall" \
	  --manual-title "fedmsg-wallboard manual" --output man/fedmsg-wallboard.1
	$(BIN)/shtab --shell=bash --prog fedmsg-wallboard listener.cli.build_parser \
	  > completions/fedmsg-wallboard
	$(BIN)/shtab --shell=zsh --prog fedmsg-wallboard listener.cli.build_parser \
	  > completions/_fedmsg-wallboard

## The wheel and the sdist, in dist/.
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

bench: $(STAMP)
	$(BIN)/python -m bench.run --write docs/BENCHMARKS.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build dist *.egg-info .coverage .coverage.*
