# Makefile - wraps Meson and Ninja. `./dev` installs the Debian packages
# this needs and then calls make; `make` alone assumes they are there.

BUILD      ?= build
ASAN_BUILD ?= build-asan
MESON      ?= meson
PYTEST     ?= /usr/bin/python3 -m pytest
LISTEN     ?= 127.0.0.1:4444

.PHONY: all build serve test test-unit test-integration test-asan test-asan-unit \
        test-asan-integration test-asan-build fuzz bench install uninstall ldconfig clean

all: build

$(BUILD)/build.ninja:
	$(MESON) setup $(BUILD) -Dwerror=true

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

serve: build
	./$(BUILD)/sockfork serve -l $(LISTEN)

# The whole suite: unit and integration tests on the normal build, then
# both again on an AddressSanitizer + UndefinedBehaviorSanitizer build, then
# the fuzz targets. `./dev stages` runs each stage, goes on past a failed
# one, and ends with a line per stage and a total.
test:
	@./dev stages

test-unit: build
	$(MESON) test -C $(BUILD) --suite unit --verbose --print-errorlogs

test-integration: build
	SOCKFORK_BIN=$(CURDIR)/$(BUILD)/sockfork SOCKFORK_HELPERS=$(CURDIR)/$(BUILD)/tests/helpers \
	  $(PYTEST) -q -rs tests/integration

$(ASAN_BUILD)/build.ninja:
	$(MESON) setup $(ASAN_BUILD) -Dwerror=true -Dbuildtype=debug \
	  -Db_sanitize=address,undefined -Db_lundef=false \
	  -Dc_args='-fno-sanitize-recover=all -fno-omit-frame-pointer'

SANITIZER_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1

test-asan: test-asan-unit test-asan-integration

test-asan-build: $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

test-asan-unit: test-asan-build
	$(SANITIZER_ENV) $(MESON) test -C $(ASAN_BUILD) --suite unit --verbose --print-errorlogs

test-asan-integration: test-asan-build
	$(SANITIZER_ENV) SOCKFORK_BIN=$(CURDIR)/$(ASAN_BUILD)/sockfork SOCKFORK_HELPERS=$(CURDIR)/$(ASAN_BUILD)/tests/helpers \
	  SOCKFORK_SANITIZED=1 $(PYTEST) -q -rs tests/integration

# libFuzzer targets, each run for FUZZ_SECS on a copy of its seed corpus.
FUZZ_SECS  ?= 10
FUZZ_BUILD ?= build-fuzz
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
              -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Isrc

$(FUZZ_BUILD)/fuzz_addr: fuzz/fuzz_addr.c src/server/addr.c src/server/addr.h include/sockfork.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_addr.c src/server/addr.c

$(FUZZ_BUILD)/fuzz_frame: fuzz/fuzz_frame.c src/channel/frame.c src/channel/frame.h src/channel/fdpass.c
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_frame.c src/channel/frame.c src/channel/fdpass.c

$(FUZZ_BUILD)/fuzz_jsonl: fuzz/fuzz_jsonl.c src/channel/jsonl.c src/channel/jsonl.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_jsonl.c src/channel/jsonl.c -ljansson

BUS_SOURCES = src/supervisor/bus.c src/supervisor/bus_codec.c src/supervisor/bus_out.c src/channel/frame.c src/channel/fdpass.c src/channel/jsonl.c src/log.c \
              src/os/nofork.c src/os/clock.c src/text.c

$(FUZZ_BUILD)/fuzz_bus: fuzz/fuzz_bus.c $(BUS_SOURCES) src/supervisor/bus.h src/supervisor/bus_codec.h src/channel/frame.h src/channel/jsonl.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_bus.c $(BUS_SOURCES) -lev -ljansson

$(FUZZ_BUILD)/fuzz_runargs: fuzz/fuzz_runargs.c tools/sockfork/runargs.c tools/sockfork/runargs.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -Itools/sockfork -o $@ fuzz/fuzz_runargs.c tools/sockfork/runargs.c

$(FUZZ_BUILD)/fuzz_rules: fuzz/fuzz_rules.c src/server/rules.c src/server/rules.h include/sockfork.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_rules.c src/server/rules.c

$(FUZZ_BUILD)/fuzz_proxy: fuzz/fuzz_proxy.c src/server/proxy.c src/server/proxy.h include/sockfork.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_proxy.c src/server/proxy.c

$(FUZZ_BUILD)/fuzz_http: fuzz/fuzz_http.c src/server/http.c src/server/http.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_http.c src/server/http.c

$(FUZZ_BUILD)/fuzz_rcodec: fuzz/fuzz_rcodec.c src/supervisor/bus_rcodec.c src/supervisor/bus_rcodec.h src/supervisor/bus_dedup.c src/supervisor/bus_dedup.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_rcodec.c src/supervisor/bus_rcodec.c src/supervisor/bus_dedup.c

$(FUZZ_BUILD)/fuzz_queue: fuzz/fuzz_queue.c src/pool/queue_codec.c src/pool/queue_codec.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_queue.c src/pool/queue_codec.c

$(FUZZ_BUILD)/fuzz_rreply: fuzz/fuzz_rreply.c src/redis/rreply.c src/redis/rreply.h
	mkdir -p $(FUZZ_BUILD)
	clang $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_rreply.c src/redis/rreply.c -lhiredis

FUZZ_TARGETS = addr frame jsonl bus runargs rules proxy http rreply queue rcodec

# libFuzzer's statistics go to $(FUZZ_BUILD)/fuzz_T.log: one line per target
# here, the log's tail when a target fails, and a total that ./dev reads.
fuzz: $(addprefix $(FUZZ_BUILD)/fuzz_,$(FUZZ_TARGETS))
	@runs=0; n=0; \
	for t in $(FUZZ_TARGETS); do \
	  log=$(FUZZ_BUILD)/fuzz_$$t.log; \
	  mkdir -p $(FUZZ_BUILD)/corpus-$$t; \
	  if ! $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECS) -max_len=4096 -print_final_stats=1 \
	      $(FUZZ_BUILD)/corpus-$$t fuzz/corpus/$$t >$$log 2>&1; then \
	    echo "fuzz_$$t: FAILED; the end of $$log:"; tail -n 60 $$log; exit 1; \
	  fi; \
	  r=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
	  echo "fuzz_$$t: $${r:-?} runs in $(FUZZ_SECS) s, no crash ($$log)"; \
	  runs=$$((runs + $${r:-0})); n=$$((n + 1)); \
	done; \
	echo "fuzz: $$n targets, $$runs runs, no crash"

bench: build
	bench/run.sh

# Into meson's prefix (default /usr/local): the command, the library, its
# header and pkg-config file, the man pages. Then, as a Debian package's
# postinst does, ldconfig, so that programs linked with
# `pkg-config --libs sockfork` find libsockfork.so.0 (not with DESTDIR, which
# stages files for a package, nor as a user, who cannot update the cache).
install: build
	$(MESON) install -C $(BUILD)
	@$(MAKE) --no-print-directory ldconfig

# Removes every file and directory meson's install log says install created.
uninstall:
	@test -f $(BUILD)/meson-logs/install-log.txt || \
	  { echo "make: nothing to uninstall: no $(BUILD)/meson-logs/install-log.txt" >&2; exit 1; }
	ninja -C $(BUILD) uninstall
	@$(MAKE) --no-print-directory ldconfig

ldconfig:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	  echo ldconfig && ldconfig; \
	elif [ -z "$(DESTDIR)" ]; then \
	  echo "make: not root: skipped ldconfig (set LD_LIBRARY_PATH to the libdir, or run ldconfig as root)" >&2; \
	fi

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
