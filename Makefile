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

.PHONY: install sysdeps run run-amqp test test-fast test-faults test-ha bench man dist clean

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
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
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
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The demo: embedded Redis, a looping replay of real messages, listener, page.
run: $(STAMP)
	@$(BIN)/python -m listener.tools.demo --dir $(DEMO_DIR) --port $(DEMO_PORT) --bus $(DEMO_BUS) --rate $(DEMO_RATE)

## The same demo on AMQP: a local RabbitMQ (Debian's, started if not running),
## messages published with fedora-messaging, the listener on `--bus amqp`.
AMQP_URL ?= amqp://guest:guest@localhost:5672/%2F
## Only the local default broker (localhost:5672) is started here; any other
## AMQP_URL must answer already.
run-amqp: $(STAMP)
	@set -- $$($(BIN)/python -c "from urllib.parse import urlsplit as u; x = u('$(AMQP_URL)'); \
	  print(x.hostname or 'localhost', x.port or 5672)"); host=$$1; port=$$2; \
	  (exec 3<>/dev/tcp/$$host/$$port) 2>/dev/null && exit 0; \
	  case "$$host:$$port" in localhost:5672|127.0.0.1:5672|::1:5672) ;; \
	    *) echo "no AMQP broker answers at $$host:$$port (AMQP_URL); start it first" >&2; exit 1;; esac; \
	  echo "starting rabbitmq-server"; rabbitmq-server -detached; \
	  for i in $$(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && exit 0; sleep 1; done; \
	  echo "rabbitmq-server did not answer on 127.0.0.1:5672 within 60 s" >&2; exit 1
	@$(BIN)/python -m listener.tools.demo --dir $(DEMO_DIR) --port $(DEMO_PORT) --rate $(DEMO_RATE) --amqp --amqp-url '$(AMQP_URL)'

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
